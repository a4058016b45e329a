"""Probes for a deployment (Kubernetes, compose, a load balancer): `/livez` answers while the
process does; `/readyz` only once it can answer searches: a verified generation is loaded, its model
has answered (index/live.py) and warmed up on a whole batch, and the served files still check. Both
are open, without the token: probes carry none, and they tell nothing about the gallery."""

from __future__ import annotations

from fastapi import APIRouter, Request

from metrix.index.errors import IndexUnavailable

from .api import error, service

router = APIRouter(tags=["probes"])


@router.get("/livez", summary="The process answers")
def livez():
    return {"status": "alive"}


@router.get("/readyz", summary="Searches can be answered")
def readyz(request: Request):
    live = service(request).live
    try:
        generation = live.answer(lambda snapshot: snapshot.index.generation)  # its files checked
    except IndexUnavailable as unavailable:
        return error(503, f"not ready: {unavailable}")
    if not live.warmed.is_set():
        return error(503, "not ready: starting, the model is warming up")
    return {"status": "ready", "generation": generation, "warm_up_seconds": round(live.warm_up_seconds, 3)}
