"""The PostgreSQL adapter: migrations, the repository and the stores built on psycopg 3.

It may import `consumer.domain`, the other adapters, `consumer.settings` and `consumer.logs`.
"""
