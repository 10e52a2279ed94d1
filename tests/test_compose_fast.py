"""Issue 6 fast paths in compose give exactly what the slow paths give."""
from __future__ import annotations

import pytest

from service.compose import _ascii_address, ascii_address


@pytest.mark.parametrize("address", [
    "reader@example.com", "Reader.Name+tag@example.co.uk", "x@xn--bcher-kva.example", "a@localhost",
    "not-an-address", "a..b@example.com", "user@Example.COM", "user@bücher.example", "o'neil@example.org",
    "trailing@example.com.", "",
])
def test_ascii_fast_path_matches_email_validator(address: str) -> None:
    assert ascii_address(address) == _ascii_address.__wrapped__(address)
