"""The real edge (`splitfc.edge.runner.run_edge`) inside the edge namespace, one codec point at a time.

The host starts ``python -m splitfc.netbench.driver SERVER SPLIT PRESET SAMPLES CACHE_DIR`` in the
edge namespace (`EdgeDriver`). It loads the model and samples once (`load_model_and_samples`),
waits for the cloud, prints ``{"ready": true}``, then reads one JSON command per stdin line,
``{"codec": ..., "qp": ..., "raw_dtype": ..., "limit": ...}``, and answers one JSON line: the
report of ``run_edge`` over the first ``limit`` samples (all when null) at concurrency 1, i.e.
``splitfc edge run``'s own head -> encode -> `EdgeClient.infer` -> decode per request, on one
fresh channel per command; or ``{"error": ...}``.

Raw features stored as float16 (the second baseline) are ``codec="raw"`` with
``raw_dtype="float16"`` (`EdgeRunConfig.raw_dtype`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from splitfc.common.errors import SplitfcError
from splitfc.netbench.link import End, stop_process


def main(argv: list[str] | None = None) -> None:
    """The edge-namespace side (see the module docstring)."""
    import asyncio
    from dataclasses import replace

    from splitfc.edge.client import EdgeClient
    from splitfc.edge.runner import EdgeRunConfig, load_model_and_samples, run_edge
    from splitfc.edge.settings import EdgeSettings

    server, split, preset, samples, cache_dir = argv if argv is not None else sys.argv[1:]
    base = EdgeRunConfig(server=server, split=split, codec="raw", samples=int(samples), preset=preset)
    settings = EdgeSettings(allow_plaintext=True, cache_dir=Path(cache_dir))
    model, inputs = load_model_and_samples(base)

    async def ready() -> None:
        async with EdgeClient(server, settings) as client:
            await client.wait_ready(120.0)

    asyncio.run(ready())
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        chosen = inputs[: cmd.get("limit")]
        config = replace(base, codec=cmd["codec"], qp=int(cmd["qp"]), samples=len(chosen),
                         raw_dtype=cmd.get("raw_dtype"))
        try:
            report = asyncio.run(run_edge(config, settings, model, chosen))
        except Exception as exc:  # report it and stay up for the next point
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        else:
            print(json.dumps({"report": report}), flush=True)


class EdgeDriver:
    """Host side: the driver process in the edge namespace, one point at a time."""

    def __init__(self, edge: End, server: str, split: str, preset: str, samples: int, workdir: Path) -> None:
        self.stderr = workdir / "edge.log"
        self._err = self.stderr.open("w")
        self.proc = subprocess.Popen(
            edge.argv([sys.executable, "-m", "splitfc.netbench.driver", server, split, preset, str(samples),
                       str(workdir / "references")]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._err.flush()
            last = (self.stderr.read_text().strip().splitlines() or ["no output"])[-1]
            raise SplitfcError(f"the edge failed: {last}")
        return json.loads(line)

    def run(self, codec: str, qp: int, raw_dtype: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """``run_edge``'s report over every sample (or the first ``limit``); `SplitfcError` if it failed."""
        assert self.proc.stdin is not None
        cmd = {"codec": codec, "qp": qp, "raw_dtype": raw_dtype, "limit": limit}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise SplitfcError(answer["error"])
        report = answer["report"]
        bad = [r for r in report["requests"] if r["status"] != "OK"]
        if bad:
            raise SplitfcError(f"{len(bad)} of {len(report['requests'])} requests failed: "
                               f"{bad[0]['status']}: {bad[0]['error']}")
        return report

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop_process(self.proc)
        self._err.close()


if __name__ == "__main__":
    main()
