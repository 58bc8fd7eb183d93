"""The PostgreSQL adapter: connection, stores, named queries (``queries.sql``), migrations.
"""
