"""Integrations with other libraries; each is imported only when the user asks for it."""
