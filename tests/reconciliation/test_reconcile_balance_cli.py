"""`flask reconcile-balance`: a read-only table and exit status by default; --fix rewrites only the
cached balance, after a confirmation, never over an unbalanced transaction, and records every
correction; every run is a job run."""
import uuid
from decimal import Decimal

import psycopg2
import pytest


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def run(*args, input=None):
        return runner.invoke(args=["reconcile-balance", *args], input=input)

    return run


@pytest.fixture
def wallets(make_user, crypto_wallet, fund):
    """Three USDC wallets holding 10, 20 and 30."""
    found = []
    for amount in ("10.00", "20.00", "30.00"):
        wallet = crypto_wallet(make_user(), "USDC")
        fund(wallet, amount)
        found.append(wallet)
    return found


def test_a_clean_ledger_exits_zero_and_says_so(cli, wallets, books):
    result = cli()
    assert result.exit_code == 0, result.output
    assert "Checked 3 wallet(s): 0 with a cached balance that differs" in result.output
    assert "Clean" in result.output and "MISMATCH" not in result.output
    (run,) = books.read("SELECT job_name, trigger, status, counts FROM job_runs")
    assert (run["job_name"], run["trigger"], run["status"]) == ("reconcile-balance", "cli", "succeeded")
    assert run["counts"]["clean"] is True


def test_all_lists_every_wallet_in_a_table(cli, wallets):
    result = cli("--all")
    assert result.exit_code == 0
    header, *rows = [line for line in result.output.splitlines() if line.strip()][:4]
    assert header.split() == ["wallet", "currency", "cached", "ledger", "difference", "status"]
    assert sorted(row.split()[0] for row in rows) == sorted(str(w) for w in wallets)
    assert all(row.split()[-1] == "OK" and row.split()[2] == row.split()[3] for row in rows)


def test_a_mismatch_is_listed_with_the_difference_and_exits_one_changing_nothing(cli, wallets, corrupt, books):
    corrupt("UPDATE wallets SET balance = 25.5 WHERE id = %(w)s", w=str(wallets[1]))
    result = cli()
    assert result.exit_code == 1
    (row,) = [line.split() for line in result.output.splitlines() if "MISMATCH" in line]
    assert row == [str(wallets[1]), "USDC", "25.500000", "20.000000", "5.500000", "MISMATCH"]
    assert "1 with a cached balance that differs" in result.output and "Not clean" in result.output
    assert books.balance(wallets[1]) == Decimal("25.5")
    assert books.count("balance_corrections") == 0


def test_one_wallet_can_be_checked_and_an_unknown_one_is_a_usage_error(cli, wallets, corrupt):
    corrupt("UPDATE wallets SET balance = 1 WHERE id = %(w)s", w=str(wallets[0]))
    assert cli(str(wallets[1])).exit_code == 0
    assert cli(str(wallets[0])).exit_code == 1
    unknown = cli(str(uuid.uuid4()))
    assert unknown.exit_code == 2 and "no user wallet" in unknown.output


def test_fix_asks_first_and_a_no_changes_nothing(cli, wallets, corrupt, books):
    corrupt("UPDATE wallets SET balance = 99 WHERE id = %(w)s", w=str(wallets[2]))
    result = cli("--fix", input="n\n")
    assert "Rewrite the cached balance of 1 wallet(s)" in result.output
    assert result.exit_code == 1 and "Nothing was changed" in result.output
    assert books.balance(wallets[2]) == Decimal("99") and books.count("balance_corrections") == 0


def test_fix_rewrites_the_cache_to_the_ledger_sum_records_it_and_clears_the_flag(app, cli, wallets, corrupt, books):
    corrupt("UPDATE wallets SET balance = 99, needs_reconciliation = true WHERE id = %(w)s", w=str(wallets[2]))
    entries_before = books.count("ledger_entries")
    result = cli("--fix", "--operator", "alice@ops", input="y\n")
    assert result.exit_code == 0, result.output
    assert "FIXED" in result.output and "cached 99.000000 -> 30.000000" in result.output
    assert books.balance(wallets[2]) == Decimal("30")
    assert books.count("ledger_entries") == entries_before  # the ledger itself is never touched
    (correction,) = books.read("SELECT * FROM balance_corrections")
    assert (correction["wallet_id"], correction["balance_before"], correction["balance_after"],
            correction["corrected_by"]) == (wallets[2], Decimal("99"), Decimal("30"), "alice@ops")
    run_id = books.read("SELECT id FROM job_runs")[0]["id"]
    assert correction["job_run_id"] == run_id and correction["created_at"] is not None
    assert books.read("SELECT needs_reconciliation FROM wallets WHERE id = :w", w=wallets[2])[0] == \
        {"needs_reconciliation": False}
    assert cli().exit_code == 0  # clean afterwards


def test_force_skips_the_question(cli, wallets, corrupt, books):
    corrupt("UPDATE wallets SET balance = 0 WHERE id = ANY(%(w)s::uuid[])", w=[str(w) for w in wallets[:2]])
    result = cli("--fix", "--force")
    assert result.exit_code == 0 and "Rewrite the cached balance" not in result.output
    assert result.output.count("FIXED") == 2 and books.count("balance_corrections") == 2
    assert cli("--force").exit_code == 2  # --force alone is a usage error


def test_fix_refuses_a_wallet_whose_transactions_do_not_balance_and_names_them(cli, wallets, fund, corrupt, books):
    result = fund(wallets[0], "5.00")
    leg = result.leg(wallets[0])
    corrupt("UPDATE ledger_entries SET amount = 6 WHERE id = %(e)s", e=leg.entry_id)
    outcome = cli("--fix", "--force")
    assert outcome.exit_code == 1
    assert f"REFUSED {wallets[0]}" in outcome.output and str(result.transaction_id) in outcome.output
    assert "1 unbalanced transaction(s)" in outcome.output
    assert books.balance(wallets[0]) == Decimal("15") and books.count("balance_corrections") == 0


@pytest.mark.parametrize("who, refusal", [("app_url", "permission denied"), ("owner_url", "append-only")])
def test_corrections_are_append_only(cli, wallets, corrupt, services, who, refusal):
    """The application's role lacks the privilege; even the owner is stopped by the trigger."""
    corrupt("UPDATE wallets SET balance = 1 WHERE id = %(w)s", w=str(wallets[0]))
    cli("--fix", "--force")
    conn = psycopg2.connect(getattr(services, who))
    try:
        for statement in ("UPDATE balance_corrections SET balance_after = 1", "DELETE FROM balance_corrections"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege, match=refusal):
                with conn, conn.cursor() as cur:
                    cur.execute(statement)
    finally:
        conn.close()


def test_large_runs_show_a_progress_bar_on_stderr(cli, wallets, monkeypatch):
    from wallet_api.reconciliation import cli as reconciliation_cli

    monkeypatch.setattr(reconciliation_cli, "PROGRESS_FROM", 2)
    result = cli()
    assert result.exit_code == 0
    assert "Checking wallets" in result.stderr and "Checking wallets" not in result.stdout
