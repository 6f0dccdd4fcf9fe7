"""What a run of the real processes may leave behind: processes in its sessions, its scratch database."""
import os

import psycopg2


def processes_in_sessions(sessions: set[int]) -> list[str]:
    """Pids of live processes whose session is one of `sessions`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                session = int(fh.read().rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError, ValueError):
            continue
        if session in sessions:
            found.append(pid)
    return found


def database_exists(admin_url: str, name: str) -> bool:
    conn = psycopg2.connect(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone()[0] > 0
    finally:
        conn.close()
