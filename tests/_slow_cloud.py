"""A cloud process whose tail sleeps (fault tests): ``python tests/_slow_cloud.py PORT DELAY_S``."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from splitfc.cloud.server import CloudServer
from splitfc.cloud.settings import CloudSettings
from splitfc.common.models import get_split_model
from splitfc.common.models.base import SplitModel, TaskOutput


class SlowModel(SplitModel):
    """The tiny model with a ``tail`` that takes ``delay`` seconds longer."""

    def __init__(self, inner: SplitModel, delay: float) -> None:
        self.inner, self.spec, self.preset, self.delay = inner, inner.spec, inner.preset, delay

    def head(self, inputs: Any) -> Any:
        return self.inner.head(inputs)

    def tail(self, features: Any) -> TaskOutput:
        time.sleep(self.delay)
        return self.inner.tail(features)

    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        return self.inner.forward_unsplit(inputs)

    def expected_shape(self) -> tuple[int | None, ...]:
        return self.inner.expected_shape()


def main() -> None:
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    settings = CloudSettings(grpc_port=port, http_port=0, splits="dinov2-cls", log_requests=False,
                             max_concurrency=2)
    server = CloudServer(settings, model_loader=lambda split, preset: SlowModel(get_split_model(split, preset), delay))
    asyncio.run(server.serve(on_start=lambda ep: print(f"listening {ep.grpc_target}", flush=True)))


if __name__ == "__main__":
    main()
