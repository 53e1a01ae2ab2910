"""The test servers themselves: a real PostgreSQL and a real Redis answer on loopback."""

from __future__ import annotations

from services import PostgresServer, RedisServer


def test_postgres_creates_databases_that_answer(postgres: PostgresServer) -> None:
    import psycopg

    url = postgres.create_database()
    with psycopg.connect(url) as con:
        assert con.execute("SELECT 1 + 1").fetchone() == (2,)
    assert postgres.create_database() != url


def test_redis_answers(redis: RedisServer) -> None:
    import redis as client

    connection = client.Redis.from_url(redis.url())
    connection.set("k", "v")
    assert connection.get("k") == b"v"
