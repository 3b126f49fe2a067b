"""Persistence: tables, engines and every statement that touches them."""
