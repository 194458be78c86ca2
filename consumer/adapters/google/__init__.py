"""The Google adapter: Calendar API calls, the batch envelope, concurrency, tokens, OAuth.

It may import `consumer.domain`, the other adapters, `consumer.settings` and `consumer.logs`.
"""
