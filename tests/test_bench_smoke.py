"""Each benchmark script runs end to end on a tiny size, so `make bench` cannot rot (nothing is timed here).

SQLite always; PostgreSQL too when DRIP_TEST_POSTGRES_URL is set (the bench creates its own databases
there). The correctness columns the benches report (no email missing or doubled, every accepted signup
stored) are asserted; the speed ratios are not.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("DRIP_TEST_POSTGRES_URL")


def run_bench(script: str, *args: str) -> str:
    env = {**os.environ, "DRIP_BENCH_POSTGRES_URL": PG or ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], env=env, capture_output=True,
                          text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| figure" in proc.stdout
    return proc.stdout


def rows(out: str, figure_part: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if figure_part in line]


@pytest.mark.slow
def test_send_bench(backend: str) -> None:
    """bench/send.py: 1 and 2 workers deliver every email exactly once to the sink, and the limit is measured."""
    out = run_bench("send.py", "--n", "30", "--workers", "1,2", "--db", backend)
    counts = rows(out, "sent/missing/doubles")
    assert len(counts) == 2
    for row in counts:
        assert row[1] == "30.0" and row[2].endswith(" 0.0"), out
    # each run against its limit, and for two workers the most CPU alone allows (every core busy)
    [bound] = rows(out, "CPU-bound best")
    assert float(bound[1].split()[0].replace(",", "")) > 0, out
    assert len(rows(out, "smtplib")) == 3


@pytest.mark.slow
def test_signup_bench(backend: str) -> None:
    """bench/signup.py: drip web and the ceiling app both answer, with no errors and every signup stored."""
    out = run_bench("signup.py", "--seconds", "0.5", "--connections", "2", "--db", backend)
    [stored] = rows(out, "stored = accepted")
    assert stored[-1] == "yes", out


@pytest.mark.slow
def test_tick_bench(backend: str) -> None:
    """bench/tick.py: both list sizes are built, a pass claims exactly the due work, the memory runs finish."""
    out = run_bench("tick.py", "--small", "60", "--large", "300", "--due", "20", "--memory-due", "100",
                    "--db", backend)
    assert len(rows(out, "find+claim 20 due of 300")) == 1
    assert len(rows(out, "peak RSS")) == 1


@pytest.mark.slow
def test_send_bench_signed(backend: str) -> None:
    """bench/send.py --dkim rsa+ed25519: every email signed and delivered once; the CPU split row is there."""
    out = run_bench("send.py", "--n", "30", "--workers", "2", "--db", backend, "--dkim", "rsa+ed25519")
    [counts] = rows(out, "sent/missing/doubles")
    assert counts[1] == "30.0" and counts[2].endswith(" 0.0"), out
    assert len(rows(out, "DKIM RSA-2048+Ed25519")) >= 1 and len(rows(out, "CPU split")) == 1


@pytest.mark.slow
def test_providers_bench(backend: str) -> None:
    """bench/providers.py: through each provider transport to the fake, every reader gets one email."""
    out = run_bench("providers.py", "--n", "40", "--delay", "0.01", "--db", backend)
    counts = rows(out, "sent/missing/doubles")
    assert len(counts) == 5
    for row in counts:
        assert row[1] == "40.0" and row[2].endswith(" 0.0"), out
    assert len(rows(out, "bare client")) == 10  # each provider's run, and the most its CPU allows
    assert len(rows(out, "CPU-bound best")) == 5


@pytest.mark.slow
@pytest.mark.postgresql_only  # bench/console_scale.py seeds PostgreSQL (generate_series, COPY) only
def test_console_scale_bench() -> None:
    """bench/console_scale.py: a tiny year-old database is seeded, every view answers 200, the counts are
    rebuilt, and tick, prune and both exports run to the end."""
    env = {**os.environ, "DRIP_BENCH_POSTGRES_URL": PG or ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "console_scale.py"), "--readers", "300", "--runs",
                           "2"], env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = [r for r in rows(proc.stdout, "| ") if r[0] != "view"]
    assert len([r for r in table if r[0].startswith(("console:", "api:", "/metrics"))]) == 18, proc.stdout
    [prune] = [r for r in table if r[0].startswith("cli: drip prune")]
    assert prune[-1] == "yes" and "transactions of <= 10,000 rows" in prune[3], prune
    [export] = [r for r in table if r[0].startswith("export: whole log")]
    assert int(export[3].split(" rows")[0].replace(",", "")) > 2000, export  # every message of the log



@pytest.mark.slow
@pytest.mark.postgresql_only
def test_console_scale_bench_reuses_a_seeded_database() -> None:
    """--seed-only keeps a seeded database and names it; --database times it again without seeding (the
    migrations and the counts' rebuild run first), here with tracking on: the home page counts opens."""
    from sqlalchemy import create_engine, text

    env = {**os.environ, "DRIP_BENCH_POSTGRES_URL": PG or ""}
    bench = [sys.executable, str(ROOT / "bench" / "console_scale.py"), "--readers", "200"]
    seeded = subprocess.run([*bench, "--events", "6", "--seed-only"], env=env, capture_output=True, text=True,
                            timeout=240, cwd=ROOT)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    [name] = [line.split("--database ")[1] for line in seeded.stdout.splitlines() if "--database " in line]
    try:
        proc = subprocess.run([*bench, "--database", name, "--views-only", "--tracking", "--runs", "2"], env=env,
                              capture_output=True, text=True, timeout=240, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        table = [r for r in rows(proc.stdout, "| ") if r[0] != "view"]
        assert [r for r in table if r[0] == "console: home (tracking on)"], proc.stdout
        [rebuild] = [r for r in table if r[0].startswith("cli: drip stats --rebuild")]
        assert rebuild[-1] == "yes", rebuild
        assert "kept: " in proc.stdout and "seeded in 0 s" in proc.stderr
    finally:
        admin = create_engine((PG or "").replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0]
                              + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
