"""Sentences the dashboard shows (preflight details, alert details) keep identifiers whole on a phone: a
`vol-…`, `i-…` or `us-east-1a` never breaks at its hyphen (docs/dashboard.md: nothing broken mid-token)."""
from dashboard import _keep_ids


def test_each_hyphenated_identifier_is_kept_whole_and_the_sentence_is_escaped():
    out = str(_keep_ids("vvol-1 is in us-east-1b but i-0abc is in us-east-1a: move <b>it</b> & retry"))
    for ident in ("vvol-1", "us-east-1b", "i-0abc", "us-east-1a"):
        assert f'<span class="id">{ident}</span>' in out
    assert "<b>" not in out and "&lt;b&gt;it&lt;/b&gt;" in out and "&amp; retry" in out
    assert "move" in out and '<span class="id">move' not in out  # plain words stay plain


def test_hostile_markup_inside_an_identifier_like_token_is_escaped_too():
    out = str(_keep_ids('vol-1"><script>x</script>'))
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert str(_keep_ids(None)) == ""
