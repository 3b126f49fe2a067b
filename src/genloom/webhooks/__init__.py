"""Outbound webhooks (Standard Webhooks): endpoints, a transactional outbox, a leasing dispatcher.

    signing      whsec_ secrets and v1 signatures
    outbox       delivery rows written by the event writer's own transaction (store.unit calls it)
    endpoints    Endpoints: per-project endpoints and secrets, SSRF-checked URLs
    deliveries   Deliveries: listing, attempts, replay
    dispatcher   Dispatcher: claims due deliveries with a lease, sends, retries, dead-letters

Nothing is imported here: store.unit imports ``outbox``, and the dispatcher imports store.unit.
"""
