"""Watching the cloud's spot interruption notice, which arrives before the SIGTERM does.

AWS posts ``spot/instance-action`` in the instance metadata about two minutes before it reclaims
a spot instance (404 until then); GCP flips ``instance/preempted`` to ``TRUE`` about thirty seconds
before. Acting on the notice instead of the signal buys the jobs that time for their checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Literal

import httpx

log = logging.getLogger(__name__)

Style = Literal["aws", "gcp"]

_AWS_TOKEN_TTL_S = 21600
_AWS_TOKEN_HEADER = "X-aws-ec2-metadata-token"


def notice_style(url: str, style: str = "auto") -> Style:
    """The metadata dialect of ``url``; ``auto`` tells GCP by its path, anything else is AWS."""
    if style in ("aws", "gcp"):
        return style  # type: ignore[return-value]
    if style != "auto":
        raise ValueError(f"spot notice style must be aws, gcp or auto, not {style!r}")
    if "computeMetadata" in url or url.rstrip("/").endswith("/preempted"):
        return "gcp"
    return "aws"


def _aws_token_url(url: str) -> str | None:
    """IMDSv2 token endpoint: ``.../latest/meta-data/...`` → ``.../latest/api/token``."""
    marker = "/latest/meta-data/"
    at = url.find(marker)
    return None if at < 0 else url[:at] + "/latest/api/token"


class SpotNoticeWatcher:
    """Polls one notice endpoint until the notice appears. An unreachable endpoint is no notice:
    the agent must not drain itself because a metadata service hiccupped."""

    def __init__(
        self, http: httpx.AsyncClient, url: str, *, style: str = "auto", interval_s: float = 2.0
    ) -> None:
        self.http = http
        self.url = url
        self.style = notice_style(url, style)
        self.interval_s = interval_s
        self._token: str | None = None
        self._token_failed = False

    async def wait(self) -> str:
        """Return a description of the notice once it is posted."""
        failing = False
        while True:
            try:
                notice = await self.check()
                if failing:
                    log.info("spot notice endpoint %s reachable again", self.url)
                failing = False
            except httpx.HTTPError as e:
                if not failing:
                    log.warning("cannot read the spot notice at %s: %s", self.url, e)
                failing = True
                notice = None
            if notice is not None:
                return notice
            await asyncio.sleep(self.interval_s)

    async def check(self) -> str | None:
        """One look: the notice, or None while there is none."""
        if self.style == "gcp":
            resp = await self.http.get(self.url, headers={"Metadata-Flavor": "Google"}, timeout=5.0)
            if resp.status_code == 200 and resp.text.strip().upper() == "TRUE":
                return "GCP preemption notice (instance/preempted is TRUE)"
            return None
        headers = await self._aws_headers()
        resp = await self.http.get(self.url, headers=headers, timeout=5.0)
        if resp.status_code == 401 and self._token is not None:
            self._token = None  # the session token expired; the next look fetches another
            return None
        if resp.status_code != 200:
            return None  # 404: no interruption scheduled
        try:
            body = json.loads(resp.text)
        except ValueError:
            body = {}
        action = body.get("action", "terminate") if isinstance(body, dict) else "terminate"
        when = body.get("time", "soon") if isinstance(body, dict) else "soon"
        return f"AWS spot interruption notice: {action} at {when}"

    async def _aws_headers(self) -> dict[str, str]:
        # IMDSv2 wants a session token; an endpoint without the token API (IMDSv1) is read without.
        if self._token is None and not self._token_failed:
            token_url = _aws_token_url(self.url)
            if token_url is None:
                self._token_failed = True
            else:
                try:
                    resp = await self.http.put(
                        token_url,
                        headers={"X-aws-ec2-metadata-token-ttl-seconds": str(_AWS_TOKEN_TTL_S)},
                        timeout=5.0,
                    )
                except httpx.HTTPError:
                    resp = None
                if resp is not None and resp.status_code == 200 and resp.text:
                    self._token = resp.text.strip()
                elif resp is not None and resp.status_code in (403, 404, 405):
                    self._token_failed = True
        return {_AWS_TOKEN_HEADER: self._token} if self._token else {}
