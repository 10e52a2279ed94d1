"""The signup ceiling: a minimal Flask app whose POST /signup inserts one row, nothing else.

Same driver and engine settings as Drip (service.core.db.make_engine: psycopg pool on PostgreSQL; WAL,
BEGIN IMMEDIATE single writer on SQLite) and the same gunicorn settings as `drip web --workers 2`, taken
from the same function (service.server.gunicorn_options, with default_threads for this database), so
the difference from Drip's own figure is what Drip's signup path adds.

    DATABASE_URL=... python bench/ceiling_app.py --port 8001
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask, jsonify, request
from gunicorn.app.base import BaseApplication
from sqlalchemy import text

from service.core.config import Settings
from service.core.db import make_engine
from service.server import default_threads, gunicorn_options

DDL = "CREATE TABLE IF NOT EXISTS bench_ceiling (id {pk}, email VARCHAR(320) NOT NULL UNIQUE)"


def create_table(url: str) -> None:
    """Once, before gunicorn starts: two workers each running CREATE TABLE IF NOT EXISTS at the same
    moment can both miss the table on PostgreSQL, and the loser's worker fails to boot."""
    engine = make_engine(url, pool_size=1)
    with engine.begin() as conn:
        pk = "INTEGER PRIMARY KEY" if url.startswith("sqlite") else "BIGSERIAL PRIMARY KEY"
        conn.execute(text(DDL.format(pk=pk)))
    engine.dispose()


def create_app(url: str):
    engine = make_engine(url, pool_size=5)
    app = Flask(__name__)

    @app.post("/signup")
    def signup():
        data = request.get_json()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_ceiling (email) VALUES (:e)"), {"e": data["email"]})
        return jsonify({"status": "subscribed"}), 201

    return app


class Server(BaseApplication):
    def __init__(self, url: str, port: int) -> None:
        self.url, self.port = url, port
        super().__init__()

    def load_config(self) -> None:
        options = gunicorn_options(host="127.0.0.1", port=self.port, workers=2, threads=default_threads(self.url))
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app(self.url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # gunicorn parses argv too
    url = Settings.from_env({"DATABASE_URL": os.environ["DATABASE_URL"], "DRIP_SECRET_KEY": "k" * 32},
                            dotenv=None).database_url
    create_table(url)
    Server(url, args.port).run()
