"""Host secrets as `vvg host enroll` makes them (docs/host-keys.md)."""

def test_a_host_secret_never_starts_with_a_dash_so_it_passes_as_a_cli_argument(monkeypatch):
    """`vvg event send --secret S` reads a secret starting with '-' as a missing argument (it happened: a flaky
    end-to-end test); new_host_secret draws again instead."""
    import secrets as std

    from vvolguard.domain import secrets as ours

    drawn = iter(["-starts-with-a-dash", "ok-secret"])
    monkeypatch.setattr(std, "token_urlsafe", lambda n: next(drawn))
    assert ours.new_host_secret() == "ok-secret"
    monkeypatch.undo()
    assert all(not ours.new_host_secret().startswith("-") for _ in range(2000))
