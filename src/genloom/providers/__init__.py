"""Hosted-model clients, one per protocol, each given an httpx.AsyncClient."""
