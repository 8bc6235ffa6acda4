"""KubeRay manifests validate against KubeRay's CRD schema (../shared/kuberay), and their entrypoint parses."""

import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from clinical_rl.config_files import load_config

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT.parent / "shared" / "kuberay"


def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.skipif(not CRDS.is_dir(), reason="../shared/kuberay (KubeRay CRDs) is not present in this checkout")
def test_rayjob_matches_crd_and_entrypoint_config_loads():
    manifest = yaml.safe_load((ROOT / "launch" / "kuberay" / "rayjob.yaml").read_text())
    schema = crd_schema(manifest["kind"])
    jsonschema.validate(manifest, schema)
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):  # the schema really constrains the manifest
        jsonschema.validate(manifest, schema)
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:2] == ["clinical-rl", "ppo"]
    config = argv[argv.index("--config") + 1]
    cfg = load_config(ROOT / config, [a for a in argv[3:] if "=" in a])
    assert cfg.ray.address == "auto" and cfg.device == "gpu"
