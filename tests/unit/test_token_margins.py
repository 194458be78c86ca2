"""The seed's token rules in the real TokenProvider (consumer/adapters/google/tokens.py),
without Kafka, PostgreSQL or the sandbox: its repository is FakeRepository, Google's token endpoint
a
FakeTokenEndpoint in place of its one blocking call.

- more than the margin (5 minutes) left: used as is; within it, or expired: refreshed, and
  the new token saved; the refresh token kept unless Google sends a new one;
- a token Google rejected is refreshed whatever its expiry says;
- one refresh per grant (one per Google account, shared by all its links) at a time; a
  refresh token Google refused is not presented again, and Google's words are kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from consumer.adapters.metrics import Metrics
from consumer.bootstrap import token_provider
from consumer.domain.errors import TokenRefreshFailed
from consumer.domain.models import LinkTokens
from consumer.settings import Settings
from tests.unit.fakes import FakeRepository, FakeTokenEndpoint

LINK = "lnk_1"
ACCOUNT = "owner@example.com"  # the link's account: its grant holds the tokens
REFRESH = "1//refresh-original"


class Tokens:
    def __init__(self, margin_s: float = 300.0) -> None:
        self.repository = FakeRepository()
        self.endpoint = FakeTokenEndpoint()
        self.provider = token_provider(
            Settings(token_refresh_margin_s=margin_s), self.repository, Metrics()
        )
        self.endpoint.install(self.provider)

    def store(self, access_token: str | None, left: timedelta | None) -> LinkTokens:
        expires = datetime.now(UTC) + left if left is not None else None
        tokens = LinkTokens(REFRESH, access_token, expires)
        self.repository.add_link(LINK, account_email=ACCOUNT, tokens=tokens)
        return tokens

    async def ask(self, rejected: str | None = None) -> str:
        stored = self.repository.links[LINK].tokens
        return await self.provider.access_token(ACCOUNT, stored, rejected=rejected)


@pytest.fixture
async def tokens() -> AsyncIterator[Tokens]:
    made = Tokens()
    yield made
    made.provider.close()


@pytest.mark.parametrize("left", [timedelta(minutes=6), timedelta(seconds=301), timedelta(hours=1)])
async def test_a_token_with_more_than_five_minutes_left_is_used_as_is(
    tokens: Tokens, left: timedelta
) -> None:
    tokens.store("ya29.still-good", left)
    assert await tokens.ask() == "ya29.still-good"
    assert tokens.endpoint.grants == [] and tokens.repository.saved_tokens == []


@pytest.mark.parametrize(
    "left",
    [timedelta(minutes=4), timedelta(seconds=299), timedelta(seconds=1), timedelta(hours=-2), None],
)
async def test_a_token_within_five_minutes_of_expiry_or_expired_is_refreshed_and_saved(
    tokens: Tokens, left: timedelta | None
) -> None:
    tokens.store("ya29.ending" if left is not None else None, left)
    token = await tokens.ask()
    assert token.startswith("ya29.granted-") and tokens.endpoint.grants == [REFRESH]
    [(account, saved, refresh_changed)] = tokens.repository.saved_tokens
    assert account == ACCOUNT and saved.access_token == token and not refresh_changed
    assert saved.expires_at is not None
    assert saved.expires_at - datetime.now(UTC) > timedelta(minutes=55)
    kept = tokens.repository.grants[ACCOUNT]
    assert kept is not None and kept.refresh_token == REFRESH  # Google sent none: kept
    assert await tokens.ask() == token  # cached: no second refresh
    assert len(tokens.endpoint.grants) == 1


async def test_the_margin_is_the_setting() -> None:
    short = Tokens(margin_s=60)
    try:
        short.store("ya29.four-minutes", timedelta(minutes=4))
        assert await short.ask() == "ya29.four-minutes"
        assert short.endpoint.grants == []
    finally:
        short.provider.close()


async def test_a_new_refresh_token_from_google_replaces_the_old(tokens: Tokens) -> None:
    tokens.endpoint.rotate_refresh_token = True
    tokens.store(None, None)
    await tokens.ask()
    [(_, saved, refresh_changed)] = tokens.repository.saved_tokens
    assert refresh_changed and saved.refresh_token.startswith("1//rotated-")
    kept = tokens.repository.grants[ACCOUNT]
    assert kept is not None and kept.refresh_token == saved.refresh_token


async def test_a_token_google_rejected_is_refreshed_whatever_its_expiry(tokens: Tokens) -> None:
    tokens.store("ya29.revoked", timedelta(hours=1))
    assert await tokens.ask() == "ya29.revoked"
    fresh = await tokens.ask(rejected="ya29.revoked")
    assert fresh != "ya29.revoked" and len(tokens.endpoint.grants) == 1


async def test_one_refresh_per_grant_for_many_concurrent_asks(tokens: Tokens) -> None:
    tokens.endpoint.delay_s = 0.05  # long enough for every ask to arrive meanwhile
    tokens.store("ya29.expired", timedelta(minutes=-1))
    answers = await asyncio.gather(*(tokens.ask() for _ in range(20)))
    assert len(set(answers)) == 1 and len(tokens.endpoint.grants) == 1


async def test_a_refused_refresh_token_is_not_presented_again_until_reconnected(
    tokens: Tokens,
) -> None:
    tokens.endpoint.refuse_with = "invalid_grant"
    tokens.store(None, None)
    with pytest.raises(TokenRefreshFailed) as first:
        await tokens.ask()
    assert not first.value.retriable and first.value.reason == "invalid_grant"
    with pytest.raises(TokenRefreshFailed) as second:
        await tokens.ask()
    assert not second.value.retriable and len(tokens.endpoint.grants) == 1  # not asked again
    tokens.provider.forget(ACCOUNT)  # reconnected: the account's new grant is tried afresh
    tokens.repository.refused_grants.pop(ACCOUNT)
    tokens.endpoint.refuse_with = None
    assert (await tokens.ask()).startswith("ya29.granted-")
    assert len(tokens.endpoint.grants) == 2


async def test_an_unavailable_token_endpoint_is_not_a_revocation(tokens: Tokens) -> None:
    tokens.endpoint.refuse_with = "server_error"
    tokens.store(None, None)
    for _ in range(2):
        with pytest.raises(TokenRefreshFailed) as refused:
            await tokens.ask()
        assert refused.value.retriable
    assert len(tokens.endpoint.grants) == 2  # tried again: an outage passes


async def test_google_refusing_the_grant_is_kept_with_its_words_for_every_process(
    tokens: Tokens,
) -> None:
    tokens.endpoint.refuse_with = "invalid_grant"
    tokens.endpoint.refuse_description = "Token has been expired or revoked."
    tokens.store(None, None)
    with pytest.raises(TokenRefreshFailed) as refused:
        await tokens.ask()
    assert refused.value.explained == "invalid_grant: Token has been expired or revoked."
    # Marked on the grant (under its row lock): another process does not present it either.
    assert tokens.repository.refused_grants == {
        ACCOUNT: "invalid_grant: Token has been expired or revoked."
    }
    other = token_provider(Settings(), tokens.repository, Metrics())
    tokens.endpoint.install(other)
    try:
        with pytest.raises(TokenRefreshFailed) as again:
            await other.access_token(ACCOUNT, None)
    finally:
        other.close()
    assert (again.value.reason, again.value.description, not again.value.retriable) == (
        "invalid_grant",
        "Token has been expired or revoked.",
        True,
    )
    assert len(tokens.endpoint.grants) == 1


async def test_links_of_one_account_share_its_grant_and_one_refresh(tokens: Tokens) -> None:
    tokens.endpoint.delay_s = 0.05
    tokens.store("ya29.expired", timedelta(minutes=-1))
    tokens.repository.add_link("lnk_2", "act_2", ACCOUNT, "cal2")  # the same account's grant
    assert tokens.repository.links["lnk_2"].tokens == tokens.repository.links[LINK].tokens
    answers = await asyncio.gather(
        *(
            tokens.provider.access_token(ACCOUNT, tokens.repository.links[link].tokens)
            for link in (LINK, "lnk_2")
            for _ in range(10)
        )
    )
    assert len(set(answers)) == 1 and tokens.endpoint.grants == [REFRESH]
