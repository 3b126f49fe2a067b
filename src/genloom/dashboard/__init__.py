"""The live dashboard at /dashboard: static assets plus a few read routes the JSON API lacks."""
