"""Worker-side extension named in `worker_extension_cls` of every rollout engine.

vLLM imports this module inside each spawned worker process before the model loads; importing
`clinical_rl.rl.weight_sync` registers the `clinical_gloo` weight-transfer backend there, which the worker then
instantiates from `weight_transfer_config`. The backend itself does the reload work (layerwise reload, tied
embedding repack), so the extension adds no RPCs.
"""

from __future__ import annotations

import clinical_rl.rl.weight_sync  # noqa: F401  (registers the backend on import)


class WeightSyncExtension:
    """Mixed into vLLM's worker class; its module's import is what matters (see the module docstring)."""
