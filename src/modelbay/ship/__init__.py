"""Shipping models: a container build context (`modelbay build`) and Kubernetes manifests
(`modelbay manifests`), for a cluster, KServe or a fleet of edge nodes selected by label.

    inventory.py   what a model file, model folder or repository holds: formats, extras, imports
    pins.py        the exact versions of what the models need, read from this environment
    wheel.py       modelbay itself as a wheel built from its source tree, byte for byte reproducible
    dockerfile.py  the Dockerfile (slim pinned base, non-root, HEALTHCHECK, `modelbay serve`)
    build.py       the build context: models copied, requirements and constraints, the wheel
    manifests.py   Deployment + Service (+ HPA), KServe InferenceService, edge-fleet DaemonSet
    healthcheck.py `python -m modelbay.ship.healthcheck`: the image's HEALTHCHECK
    prebuild.py    `python -m modelbay.ship.prebuild`: models' own environments, built in the image

Nothing here imports torch or the server.
"""
