"""`clip-rt serve`'s HTTP API on both runners (one process: uvicorn in this test process; Ray Serve: the session's
local cluster): answers equal to in-process clip_rt calls, the JSON shapes, dynamic batching across concurrent
clients, every malformed request answered 4xx with its reason while the server stays up, a full queue answered
JSON 503 + Retry-After (and retried by the Client), bad settings and a mismatched index refused before anything
starts. tests/serve/test_serve_settings.py checks what needs no running server (embedding JSON, spinning settings,
missing extras, lean imports). tests/serve/test_serve_process.py stops real `clip-rt serve` processes with SIGTERM under load."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clip_rt.tolerances import tolerance

pytest.importorskip("fastapi", reason="serving needs clip-rt[serve]")
pytest.importorskip("uvicorn", reason="serving needs clip-rt[serve]")
httpx = pytest.importorskip("httpx", reason="serving needs clip-rt[serve]")

from clip_rt.client import Client, ServeError  # noqa: E402
from clip_rt.serve.loadgen import free_port  # noqa: E402

EXACT = tolerance("onnxruntime", "fp32").min_cosine  # 0.99999: the server runs the same artifact as in-process
TEXTS = ["a dog", "a photo of a cat sitting on a red mat next to a window", "two", "an airplane",
         " ".join(["a very long caption that goes on"] * 20)]  # the last one is cut at 77 tokens, as in-process
RUNNERS = ["one-process", "ray"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def photos(data_dir: Path) -> list[str]:
    """caltech101 photos of several sizes, grayscale ones included."""
    files = sorted(str(p) for p in (data_dir / "caltech101" / "images").iterdir())
    return files[::60][:12]


@pytest.fixture(scope="module")
def model(tiny_package):
    import clip_rt

    return clip_rt.load(tiny_package)


@pytest.fixture(scope="module")
def index_dir(model, photos, tmp_path_factory) -> Path:
    from clip_rt.search import update_images

    path = tmp_path_factory.mktemp("index") / "idx"
    index, report = update_images(path, model, photos, decode="exact")
    assert not report.errors and len(index) == len(photos)
    index.close()
    return path


class Running:
    """A started server of either runner: its URL, config, and how to add a second application (tight limits)."""

    def __init__(self, runner: str, url: str, config, tiny_package: Path):
        self.runner, self.url, self.config, self.tiny_package = runner, url, config, tiny_package

    def another(self, **settings):
        """A context manager yielding the URL of a second server of the same runner with `settings`."""
        import contextlib

        from clip_rt.serve import LocalServer, ServeConfig

        @contextlib.contextmanager
        def local():
            server = LocalServer(ServeConfig(str(self.tiny_package), port=free_port(), **settings))
            try:
                yield server.start()
            finally:
                server.stop()

        @contextlib.contextmanager
        def on_ray():
            from ray import serve

            from clip_rt.serve import build_app

            cfg = ServeConfig(str(self.tiny_package), port=self.config.port, replica_cpus=0.25, **settings)
            serve.run(build_app(cfg), name="tight", route_prefix="/tight", blocking=False)
            url = self.url + "/tight"
            deadline = time.monotonic() + 120
            while httpx.get(url + "/healthz", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "the second application never became healthy"
                time.sleep(0.5)
            try:
                yield url
            finally:
                serve.delete("tight")

        return local() if self.runner == "one-process" else on_ray()


@pytest.fixture(scope="module", params=RUNNERS)
def server(request, tiny_package, index_dir, tmp_path_factory):
    """The tiny package served with small batches and a 1 MiB body limit by each runner in turn."""
    from clip_rt.serve import LocalServer, ServeConfig

    config = ServeConfig(str(tiny_package), port=free_port(), max_batch_size=8, batch_wait_ms=30,
                         max_body_bytes=1 << 20, max_items=64, index=str(index_dir), replica_cpus=0.5,
                         cache_dir=str(tmp_path_factory.mktemp("label-cache")))
    if request.param == "one-process":
        local = LocalServer(config)
        yield Running("one-process", local.start(), config, tiny_package)
        counts = local.stop()
        assert counts["answered"] == counts["accepted"] > 0, counts
        return
    from ray import serve

    from clip_rt.serve import start

    request.getfixturevalue("ray_cluster")
    url = start(config)
    yield Running("ray", url, config, tiny_package)
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, timeout=60) as c:
        yield c


def test_embed_text_equals_in_process(client, model):
    got = client.embed_texts(TEXTS)
    with pytest.warns(UserWarning):  # the long one is cut, in-process as on the server
        ref = np.stack([model.encode_texts([t])[0] for t in TEXTS])
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(got, ref).min() >= EXACT


def test_embed_image_multipart_and_base64_with_a_corrupt_file(client, server, model, photos):
    from clip_rt.errors import ImageError
    from clip_rt.prepare import prepare

    parts = [(Path(f).name, Path(f).read_bytes()) for f in photos]
    corrupt = ("corrupt.jpg", parts[0][1][:400])  # a JPEG cut short
    with pytest.raises(ImageError) as in_process:
        prepare(corrupt[1], model.preprocess_config)
    got = client.embed_images(parts[:3] + [corrupt] + parts[3:])
    assert got.files == [n for n, _ in parts]  # input order, the corrupt one left out
    assert got.errors == [{"file": "corrupt.jpg", "error": in_process.value.reason}]
    ref = model.encode_images(photos)
    assert cosines(got.embeddings, ref).min() >= EXACT
    doc = {"images": [base64.b64encode(d).decode() for _, d in parts[:4]], "names": [n for n, _ in parts[:4]]}
    r = httpx.post(server.url + "/embed/image", json=doc, timeout=60)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"embeddings", "files", "errors"} and r.json()["files"] == doc["names"]
    assert cosines(np.asarray(r.json()["embeddings"], np.float32), ref[:4]).min() >= EXACT


def test_concurrent_clients_are_batched_and_exact(server, model, photos):
    """16 client threads, text and image requests mixed: every answer equals in-process, and the service merged
    requests from different clients into model calls (its /info counters say so)."""
    before = Client(server.url).info()["replica"]["batches"]
    ref_img = model.encode_images(photos)
    ref_txt = model.encode_texts(TEXTS[:4])
    worst = []

    def one_client(c: int) -> None:
        with Client(server.url, timeout=60) as cl:
            for n in range(6):
                if (c + n) % 2:
                    i = (c + n) % len(photos)
                    got = cl.embed_images([photos[i]]).embeddings
                    worst.append(float(cosines(got, ref_img[i: i + 1])[0]))
                else:
                    i = (c + n) % 4
                    worst.append(float(cosines(cl.embed_texts([TEXTS[i]]), ref_txt[i: i + 1])[0]))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one_client, range(16)))
    assert len(worst) == 96 and min(worst) >= EXACT
    after = Client(server.url).info()["replica"]["batches"]
    calls = sum(after[k]["calls"] - before[k]["calls"] for k in after)
    items = sum(after[k]["items"] - before[k]["items"] for k in after)
    assert items == 96 and calls < items, f"no dynamic batching: {calls} model calls for {items} items"
    assert max(after[k]["largest"] for k in after) > 1
    assert all(int(size) <= 8 for k in after for size in after[k]["sizes"])  # --max-batch-size


def test_a_lone_request_runs_on_the_loop_and_concurrent_ones_on_the_model_thread(server, client, photos):
    """A request alone in the service with the model idle is encoded (and its one image decoded) on the event
    loop's thread, without the hops to the model and decode threads and back; concurrent ones still batch on the
    model thread (the test above)."""
    before = client.info()["gateway"]["calls_here"]
    client.embed_texts(["a lone caption"])
    client.embed_images([photos[0]])
    client.embed_texts(["two", "texts"])  # more than one item: the model thread, as a batch
    assert client.info()["gateway"]["calls_here"] == before + 2


MALFORMED = [  # (path, request kwargs, status, words the reason must contain)
    ("/embed/text", {"content": b'{"texts": ["a", ', "headers": {"content-type": "application/json"}}, 400, "json"),
    ("/embed/text", {"json": {"texts": "not a list"}}, 400, "texts"),
    ("/embed/text", {"json": {"texts": ["ok", "  "]}}, 400, "texts[1] is empty"),
    ("/embed/text", {"json": {"texts": []}}, 400, "empty"),
    ("/embed/text", {"json": {"texts": [1, 2]}}, 400, "string"),
    ("/embed/text", {"json": {"texts": ["a"] * 65}}, 400, "at most 64"),
    ("/embed/text", {"json": {"text": ["a"]}}, 400, "texts"),
    ("/embed/image", {"files": [("files", ("bad.png", b"not a png"))]}, 400, "not an image"),
    ("/embed/image", {"files": [("files", ("empty.jpg", b""))]}, 400, "empty"),
    ("/embed/image", {"files": [("other", ("a.jpg", b"x"))]}, 400, "'files'"),
    ("/embed/image", {"json": {"images": ["%%% not base64"]}}, 400, "base64"),
    ("/embed/image", {"json": {"images": [12]}}, 400, "images.0"),
    ("/embed/image", {"json": {}}, 400, "images"),
    ("/embed/image", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "content type"),
    ("/embed/text", {"content": b"a dog", "headers": {"content-type": "text/plain"}}, 415, "content type"),
    ("/embed/image", {"files": [("files", ("big.jpg", b"\0" * (2 << 20)))]}, 413, "limit"),
    ("/classify", {"json": {"images": [], "labels": ["a"], "templates": "/etc/passwd"}}, 400, "templates"),
    ("/classify", {"json": {"images": [], "labels": []}}, 400, "labels"),
    ("/classify", {"json": {"images": [], "labels": ["a"], "top_k": 0}}, 400, "top_k"),
    ("/search", {"json": {}}, 400, "text, an image"),
    ("/search", {"json": {"text": "a", "text_weight": 2}}, 400, "text_weight"),
    ("/nowhere", {"json": {}}, 404, "not found"),
]




def test_malformed_requests_get_4xx_with_a_reason_and_the_server_stays_up(server, client):
    for path, kwargs, status, words in MALFORMED:
        r = httpx.post(server.url + path, timeout=60, **kwargs)
        assert r.status_code == status, (path, kwargs.get("json"), r.status_code, r.text)
        assert words.lower() in r.json()["error"].lower(), (path, r.text)
    # A body without Content-Length (chunked) is cut off at the limit too.
    r = httpx.post(server.url + "/embed/text", content=iter([b'{"texts": ["', b"a" * (1 << 20), b'"]}']),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert httpx.get(server.url + "/embed/text", timeout=30).status_code == 405
    assert client.health() == {"status": "ok"}
    assert client.embed_texts(["still serving"]).shape == (1, 32)


def test_classify_uses_the_package_scoring_and_caches_label_embeddings(client, server, model, photos):
    from clip_rt.zeroshot import ZeroShotClassifier

    labels = ["a face", "an airplane", "a motorbike", "a leopard"]
    ref = ZeroShotClassifier(model, labels, templates="imagenet", cache=False).predict(photos[:5], top_k=3)
    first = client.classify(photos[:5], labels, templates="imagenet", top_k=3)
    second = client.classify(photos[:5], labels, templates="imagenet", top_k=3)
    assert first["cache"] in ("computed", "disk") and second["cache"] == "memory"
    for doc in (first, second):
        assert [r["file"] for r in doc["results"]] == photos[:5] and doc["errors"] == []
        for row, preds in zip(doc["results"], ref):
            assert [x["label"] for x in row["labels"]] == [p.label for p in preds]
            assert np.allclose([x["score"] for x in row["labels"]], [p.score for p in preds], atol=1e-5)
    cached = list((Path(server.config.cache_dir) / "text-embeddings").glob("*.npy"))
    assert len(cached) == 1  # written to disk for every other replica and process


def test_search_equals_the_in_process_index(client, model, index_dir, photos):
    from clip_rt.search import Index

    index = Index.open(index_dir)
    queries = ({"text": "a leopard"}, {"image": photos[3]}, {"text": "a face", "image": photos[7], "text_weight": 0.3})
    for query in queries:
        ref = index.search(model, top_k=5, **query)
        got = client.search(top_k=5, **query)
        assert [h["file"] for h in got] == [h.file for h in ref]
        assert np.allclose([h["score"] for h in got], [h.score for h in ref], atol=1e-5)


def test_openapi_and_info(server):
    paths = httpx.get(server.url + "/openapi.json", timeout=30).json()["paths"]
    assert {"/embed/text", "/embed/image", "/classify", "/search", "/healthz", "/info"} <= set(paths)
    assert set(paths["/embed/image"]["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert httpx.get(server.url + "/docs", timeout=30).status_code == 200
    info = httpx.get(server.url + "/info", timeout=30).json()
    assert info["runner"] == server.runner and info["config"]["max_batch_size"] == 8
    assert info["replica"]["model"]["backend"] == "onnxruntime" and info["replica"]["index"]["count"] == 12
    assert set(info["replica"]["batches"]) == {"images", "texts"}
    tuning, twin = info["replica"]["model"]["tuning"], info["replica"]["lone_twin"]  # the default (spinning None)
    assert tuning["spinning"] is False and twin["spinning"] is True and twin["spin_between_runs"] is False, info
    assert info["requests"]["accepted"] > info["requests"]["answered"] >= 1  # this request is not answered yet


def test_full_queue_answers_503_with_a_reason_and_the_client_retries(server, photos):
    """Batch 1, one request waiting at most: while a /classify of 20,000 new labels holds the model, a burst of 24
    texts gets 503s with a JSON reason and a Retry-After, never a 500; Client's retries then carry every request
    of a second burst through."""
    with server.another(max_batch_size=1, batch_wait_ms=0, max_queued=1) as url:
        labels = [f"{server.runner} label {i}" for i in range(20_000)]
        photo = Path(photos[0])
        with ThreadPoolExecutor(25) as pool:
            held = pool.submit(httpx.post, url + "/classify", timeout=120,
                               json={"images": [base64.b64encode(photo.read_bytes()).decode()], "labels": labels})
            time.sleep(0.3)  # the classify request is on the model now
            texts = [f"caption number {i} " * 8 for i in range(24)]
            answers = list(pool.map(lambda t: httpx.post(url + "/embed/text", json={"texts": [t]}, timeout=60), texts))
            assert held.result().status_code == 200, held.result().text
        codes = sorted(r.status_code for r in answers)
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert "queue is full" in busy.json()["error"] and busy.headers["retry-after"].isdigit()

        clients = [Client(url, timeout=60, retries=40, backoff_s=0.05, max_backoff_s=0.5) for _ in range(12)]
        held = ThreadPoolExecutor(1).submit(httpx.post, url + "/classify", timeout=120, json={
            "images": [base64.b64encode(photo.read_bytes()).decode()], "labels": [x + " again" for x in labels]})
        time.sleep(0.3)
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda ct: ct[0].embed_texts([ct[1]]), zip(clients, texts)))
        assert held.result().status_code == 200
        assert all(g.shape == (1, 32) for g in got)
        assert sum(c.retried for c in clients) > 0, "the burst never filled the queue; the retry path went untested"


def test_cli_refuses_bad_settings_and_a_mismatched_index_before_starting_anything(tiny_package, index_dir, capsys):
    """In one line each, with the fix, before a port is bound, a model loaded or Ray started (the index was built
    in fp32; fp16 embeddings are other embeddings)."""
    from clip_rt.cli import main

    assert main(["serve", str(tiny_package), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be a positive integer" in capsys.readouterr().err
    assert main(["serve", str(tiny_package) + "-missing"]) == 2
    assert "not a model package" in capsys.readouterr().err
    assert main(["serve", str(tiny_package), "--replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert "--replicas" in err and "add --ray" in err, err
    for extra in ([], ["--ray"]):
        t0 = time.monotonic()
        assert main(["serve", str(tiny_package), "--precision", "fp16", "--index", str(index_dir), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("clip-rt serve: error: the index"), err
        assert "--precision fp32" in err and "rebuild the index" in err, err
        assert time.monotonic() - t0 < 10
    assert main(["serve", str(tiny_package), "--precision", "int8", "--index", str(index_dir), "--ray"]) == 2
    err = capsys.readouterr().err  # a precision the package lacks: the export command that adds it
    assert err.count("\n") == 1 and "no int8 image artifact" in err and "clip-rt export" in err, err


# -- slow: a replica killed under load (Ray, two deployments) -----------------------------------------------------
def encoder_replicas(app: str) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA") and f"{app}#Encoder#" in a["name"])


@pytest.mark.slow
def test_replica_killed_under_load_is_replaced_and_no_request_is_lost(ray_cluster, tiny_package, model, photos,
                                                                      tmp_path):
    """Two deployments (gateway -> two encoder replicas), 8 image clients for 20 s; at 5 s two /classify calls of
    20,000 new labels each (seconds of model time) are sent, one lands on each replica, and one replica is killed
    while it holds one. Every request gets its right answer (the gateway retries the call the dead replica had
    accepted, Serve's router resends those it had not, the client retries any 503), none hangs, and Serve starts a
    replacement."""
    import ray
    from ray import serve

    from clip_rt.serve import ServeConfig, start

    cfg = ServeConfig(str(tiny_package), port=free_port(), replicas=2, replica_cpus=0.5, max_batch_size=64,
                      batch_wait_ms=30, ray_deployments=2, cache_dir=str(tmp_path / "labels"))
    url = start(cfg, name="kill", route_prefix="/kill")
    deadline = time.monotonic() + 180
    while len(encoder_replicas("kill")) < 2 or httpx.get(url + "/healthz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the application never came up"
        time.sleep(0.5)
    try:
        ref = model.encode_images(photos)
        stop_at = time.monotonic() + 20
        spans, worst, errors = [], [], []

        def one_client(c: int) -> None:
            with Client(url, timeout=60, retries=30, backoff_s=0.1, max_backoff_s=2) as cl:
                n = 0
                while time.monotonic() < stop_at:
                    i = (c + n) % len(photos)
                    t0 = time.monotonic()
                    try:
                        got = cl.embed_images([photos[i]]).embeddings
                        worst.append(float(cosines(got, ref[i: i + 1])[0]))
                    except ServeError as e:
                        errors.append(str(e))
                    spans.append((t0, time.monotonic()))
                    n += 1

        def long_call(k: int) -> dict:
            image = base64.b64encode(Path(photos[0]).read_bytes()).decode()
            with Client(url, timeout=120, retries=30, backoff_s=0.1, max_backoff_s=2) as cl:  # JSON: 20,000 labels
                return cl.request("POST", "/classify", json={"images": [image], "top_k": 1,
                                                              "labels": [f"kill test {k} {i}" for i in range(20_000)]})

        victims = encoder_replicas("kill")
        with ThreadPoolExecutor(10) as pool:
            running = [pool.submit(one_client, c) for c in range(8)]
            time.sleep(5.0)
            long = [pool.submit(long_call, k) for k in range(2)]
            time.sleep(0.5)  # both label matrices are being computed now, one per replica
            killed_at = time.monotonic()
            ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
            for r in running:
                r.result()
            answers = [r.result() for r in long]
        held = [b - a for a, b in spans if a < killed_at < b]
        info = Client(url).info()
        print(f"\n{len(spans)} requests, {len(held)} image requests in flight at the kill; slowest "
              f"{max(b - a for a, b in spans):.2f} s; gateway counters {info['gateway']}")
        assert not errors, errors[:3]
        assert all(len(a["results"]) == 1 and a["errors"] == [] for a in answers)
        assert info["gateway"]["replica_losses"] >= 1, "the dead replica held no accepted call: nothing was retried"
        assert len(worst) == len(spans) > 50 and min(worst) >= EXACT
        deadline = time.monotonic() + 180
        while not (len(encoder_replicas("kill")) == 2 and victims[0] not in encoder_replicas("kill")):
            assert time.monotonic() < deadline, f"no replacement replica: {encoder_replicas('kill')}"
            time.sleep(1)
    finally:
        serve.shutdown()
