"""Real transmission cost over a shaped link (``splitfc netbench``; root only, skips otherwise).

Two network namespaces joined by a veth pair, shaped with ``tc`` (`link`); the cloud server in
one, the real edge (`splitfc.edge.runner.run_edge`, `driver`) in the other; bytes on the wire
are the veth's interface counters around each codec point (`measure`), and a plain TCP probe
checks the link and the counting (`probe`). `bench.run_netbench` puts them together.
"""

from splitfc.netbench.bench import NetbenchOptions, run_netbench
from splitfc.netbench.link import NetemUnavailable, VethLink, namespaces_unavailable_reason

__all__ = ["NetbenchOptions", "NetemUnavailable", "VethLink", "namespaces_unavailable_reason", "run_netbench"]
