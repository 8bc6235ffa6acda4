"""KubeRay manifests: every RayCluster/RayJob validates against KubeRay's CRD schema (../shared/kuberay), every
entrypoint parses and its config loads, and the facts a run depends on hold: output_dir absolute and on the shared
PersistentVolumeClaim mounted by every pod, the W&B key from a Secret, token auth, an entrypoint that resolves."""

import shlex
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from clinical_rl.config_files import load_config
from clinical_rl.launch.cluster import JOB_ENV_VAR, check_job_outputs

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "launch" / "kuberay"
CRDS = ROOT.parent / "shared" / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
RAY_MANIFESTS = [p for p in MANIFESTS if yaml.safe_load(p.read_text())["apiVersion"] == "ray.io/v1"]
JOBS = [p for p in RAY_MANIFESTS if yaml.safe_load(p.read_text())["kind"] == "RayJob"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@cache
def crd(kind: str) -> dict:
    # libyaml's loader when there is one: the CRDs are 1-2 MB of YAML
    return yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader",
                                                                                         yaml.SafeLoader))


def crd_schema(kind: str) -> dict:
    crd_doc = crd(kind)
    (version,) = [v for v in crd_doc["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def cluster_spec(job: dict) -> dict:
    """The RayCluster spec a RayJob runs on: its own, or that of the RayCluster manifest its selector names."""
    if "rayClusterSpec" in job["spec"]:
        return job["spec"]["rayClusterSpec"]
    name = job["spec"]["clusterSelector"]["ray.io/cluster"]
    (cluster,) = [m for m in map(load, RAY_MANIFESTS) if m["kind"] == "RayCluster" and m["metadata"]["name"] == name]
    return cluster["spec"]


def pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


def test_there_are_a_raycluster_and_a_cpu_and_a_gpu_rayjob():
    kinds = sorted(load(p)["kind"] for p in RAY_MANIFESTS)
    assert kinds == ["RayCluster", "RayJob", "RayJob"], kinds
    devices = sorted(entrypoint_config(p)[1].device for p in JOBS)
    assert devices == ["cpu", "gpu"]


@pytest.mark.skipif(not CRDS.is_dir(), reason="../shared/kuberay (KubeRay's CRDs) is not present beside this "
                    "checkout: the schema check needs ray.io_rayclusters.yaml and ray.io_rayjobs.yaml there")
@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_crd(path):
    manifest = load(path)
    schema = crd_schema(manifest["kind"])
    jsonschema.validate(manifest, schema)
    spec = manifest["spec"]["rayClusterSpec"] if "rayClusterSpec" in manifest["spec"] else manifest["spec"]
    if "workerGroupSpecs" in spec:  # the schema really constrains the manifest
        spec["workerGroupSpecs"][0]["replicas"] = "two"
    else:
        manifest["spec"]["entrypoint"] = ["python"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, schema)


def entrypoint_config(path: Path):
    job = load(path)
    argv = shlex.split(job["spec"]["entrypoint"])
    config = argv[argv.index("--config") + 1]
    return argv, load_config(ROOT / config, [a for a in argv[argv.index(config) + 1:] if "=" in a])


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_rayjob_entrypoint_resolves_and_writes_to_the_shared_volume(path, monkeypatch):
    job = load(path)
    argv, cfg = entrypoint_config(path)
    # `python -m clinical_rl`: the image's environment python, not a script that needs its bin/ on the head's PATH
    assert argv[:3] == ["python", "-m", "clinical_rl"] and argv[3] in ("ppo", "pipeline")
    assert cfg.ray.address == "auto"
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"] == "/app"
    assert job["spec"]["submissionMode"] == "K8sJobMode"  # the local working_dir is packaged by the submitter pod
    monkeypatch.setenv(JOB_ENV_VAR, "{}")
    check_job_outputs(cfg)  # absolute: accepted under the job

    (pvc,) = [load(p) for p in MANIFESTS if load(p)["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # the head's driver and the workers' ranks write to it
    spec = cluster_spec(job)
    assert spec["authOptions"]["mode"] == "token"
    for pod in pod_specs(spec):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        for container in pod["containers"]:
            mounts = [m for m in container["volumeMounts"] if claims.get(m["name"]) == pvc["metadata"]["name"]]
            assert mounts and Path(cfg.output_dir).is_relative_to(mounts[0]["mountPath"]), container["name"]
            if cfg.device == "gpu":  # the SFT model is read from the same volume on every node
                assert Path(cfg.model.path).is_relative_to(mounts[0]["mountPath"])

    (head,) = pod_specs(spec)[0]["containers"]
    (key,) = [e for e in head["env"] if e["name"] == "WANDB_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["name"] == "wandb" and key["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    if cfg.tracking.wandb_mode == "online":
        assert not key["valueFrom"]["secretKeyRef"].get("optional", False)
