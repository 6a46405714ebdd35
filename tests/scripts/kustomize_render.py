"""Renders deploy/kubernetes the way `kubectl apply -k` would for what the base uses, without
kubectl (not available here): every resource listed in kustomization.yaml must exist and parse;
the namespace, the common labels and the image override are applied; the result is written as
one multi-document YAML file for kubernetes-validate. Also checks what the schema cannot: the
Service, the PodMonitor and the DaemonSet select the same pods, on a port the container names,
and the image the kustomization overrides is the one the DaemonSet uses.

usage: kustomize_render.py DIR OUT.yaml   (exit 1 with one line per problem)
"""

import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}


def main(base: Path, out: Path) -> int:
    problems = []
    k = yaml.safe_load((base / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        problems.append(f"kustomization.yaml: fields this check does not render: {sorted(unknown)}")
    docs = []
    for res in k.get("resources", []):
        path = base / res
        if not path.is_file():
            problems.append(f"{res}: listed in kustomization.yaml but missing")
            continue
        try:
            loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            problems.append(f"{res}: not YAML: {e}")
            continue
        if not loaded:
            problems.append(f"{res}: empty")
        for d in loaded:
            for field in ("apiVersion", "kind", "metadata"):
                if field not in d:
                    problems.append(f"{res}: a document without {field}")
            docs.append((res, d))
    listed = {str(p.relative_to(base)) for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    for extra in sorted(listed - set(k.get("resources", []))):
        problems.append(f"{extra}: in {base} but not in kustomization.yaml's resources")

    images = {}
    for i in k.get("images", []):
        unknown = set(i) - {"name", "newName", "newTag"}
        if "name" not in i or unknown:
            problems.append(f"kustomization.yaml: image entry {i} (this check renders name, newName, newTag)")
            continue
        images[i["name"]] = i
    used_images = set()
    for _, d in docs:
        md = d.setdefault("metadata", {})
        if d.get("kind") != "Namespace" and "namespace" in k:
            md["namespace"] = k["namespace"]
        for pairs in k.get("labels", []):
            md.setdefault("labels", {}).update(pairs.get("pairs", {}))
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            # kustomize matches the image's name without its tag
            image = c["image"]
            slash = image.rfind("/")
            colon = image.rfind(":")
            name, tag = (image[:colon], image[colon + 1 :]) if colon > slash else (image, "")
            used_images.add(name)
            if name in images:
                i = images[name]
                new_tag = i.get("newTag", tag)
                c["image"] = i.get("newName", name) + (f":{new_tag}" if new_tag else "")
    for name in images:
        if name not in used_images:
            problems.append(f"kustomization.yaml: image {name!r} is used by no container")

    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for ds in by_kind.get("DaemonSet", []):
        pod_labels = ds["spec"]["template"]["metadata"].get("labels", {})
        ports = {
            p.get("name")
            for c in ds["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        selects = lambda sel: sel and all(pod_labels.get(k) == v for k, v in sel.items())
        if not selects(ds["spec"]["selector"].get("matchLabels")):
            problems.append("DaemonSet: its selector does not match its own pods")
        for svc in by_kind.get("Service", []):
            if not selects(svc["spec"].get("selector")):
                problems.append(f"Service {svc['metadata']['name']}: selects no probe pod")
            for p in svc["spec"].get("ports", []):
                if p.get("targetPort") not in ports:
                    problems.append(f"Service: targetPort {p.get('targetPort')!r} not a container port")
        for pm in by_kind.get("PodMonitor", []):
            if pm.get("apiVersion") != "monitoring.coreos.com/v1":
                problems.append(f"PodMonitor: apiVersion {pm.get('apiVersion')}")
            if not selects(pm["spec"]["selector"].get("matchLabels")):
                problems.append("PodMonitor: selects no probe pod")
            for e in pm["spec"].get("podMetricsEndpoints", []):
                if e.get("port") not in ports:
                    problems.append(f"PodMonitor: port {e.get('port')!r} not a container port")
        sa = ds["spec"]["template"]["spec"].get("serviceAccountName")
        if sa and sa not in {s["metadata"]["name"] for s in by_kind.get("ServiceAccount", [])}:
            problems.append(f"DaemonSet: service account {sa!r} not in the base")
        for v in ds["spec"]["template"]["spec"].get("volumes", []):
            cm = v.get("configMap", {}).get("name")
            if cm and cm not in {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}:
                problems.append(f"DaemonSet: ConfigMap {cm!r} not in the base")

    for p in problems:
        print(p)
    if problems:
        return 1
    out.write_text(yaml.safe_dump_all([d for _, d in docs], sort_keys=False))
    print(f"rendered {len(docs)} resources from {base} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
