"""The web dashboard in a real browser (headless Chromium) against a real `whetstone serve`
(the embedded default: SQLite, embedded broker and worker) training the tiny random model:
enter the key, upload files by drag-and-drop (a broken one shows its offending line), start a
job, watch the loss chart gain points while it trains, then ask the playground's two sides.
A screenshot of each page is saved under $WHETSTONE_TEST_SCREENSHOTS (default .cache/screenshots)."""

from __future__ import annotations

import json
import os
import time

import httpx
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import TINY
from tests.data import chat_jsonl
from tests.e2e.browser import chromium, screenshots_dir
from tests.e2e.server import cli, server


def click_if_there(page, by: str, value: str) -> bool:
    """Click the element if it is on the page; False (try again) if it is not, or if the page
    re-rendered it between finding and clicking (the job page live-updates)."""
    try:
        found = page.find_elements(by, value)
        if found:
            found[0].click()
            return True
    except StaleElementReferenceException:
        pass
    return False

# Drop a file on the drop zone as a user's drag-and-drop would (a DataTransfer carrying a File).
DROP = """
const [name, text] = arguments;
const transfer = new DataTransfer();
transfer.items.add(new File([text], name, {type: "application/jsonl"}));
const zone = document.getElementById("dropzone");
for (const type of ["dragenter", "dragover", "drop"])
  zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
"""

READ_JOB_PAGE = """
const status = document.getElementById("job-status");
return [Number(document.getElementById("loss-chart").dataset.trainPoints),
        status ? status.dataset.status : "", document.getElementById("stream-state").textContent];
"""

# The page's own SSE reader (fetch + ReadableStream, Last-Event-ID) over a finished job's stream.
READ_STREAM = """
const [jobId, lastEventId, done] = arguments;
Promise.all([import("/ui/js/api.js"), import("/ui/js/sse.js")]).then(async ([api, sse]) => {
  const ids = [];
  const response = await api.stream(`/fine_tuning/jobs/${jobId}/events?stream=true`, {lastEventId});
  for await (const message of sse.readEvents(response)) {
    if (message.data === "[DONE]") { ids.push("DONE"); break; }
    JSON.parse(message.data);
    ids.push(Number(message.id));
  }
  done(ids);
}).catch((error) => done(String(error)));
"""

# Press a job-page button once it is enabled, in one step (the page re-renders its buttons).
PRESS = """
const button = document.getElementById(arguments[0]);
if (!button || button.disabled) return false;
button.click();
return true;
"""
STATUS = "const s = document.getElementById('job-status'); return s ? s.dataset.status : null;"


def sse_ids(base: str, key: str, job_id: str) -> list[int]:
    with httpx.stream("GET", f"{base}/fine_tuning/jobs/{job_id}/events", params={"stream": "true"},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30) as response:
        return [int(line.removeprefix("id: ")) for line in response.iter_lines() if line.startswith("id: ")]


def test_dashboard_upload_train_watch_and_compare(tmp_path, base_models_dir):
    env = {**os.environ, "WHETSTONE_DATA_DIR": str(tmp_path / "data"), "WHETSTONE_BASE_MODELS_DIR": str(base_models_dir),
           # Without Redis the stream polls the database; poll often so a fast machine's run still shows steps.
           "WHETSTONE_EVENTS_POLL_INTERVAL": "0.2"}
    for name in ("WHETSTONE_DATABASE_URL", "WHETSTONE_BROKER_URL"):
        env.pop(name, None)
    key = cli(env, "keys", "create", "--project", "dash")
    shots = screenshots_dir()
    for old in shots.glob("*.png"):
        old.unlink()
    good = chat_jsonl(20).decode()
    broken = good.splitlines()
    broken[2] = '{"messages": [{"role": "user", "content": "Hi"}]'  # line 3: not even JSON
    with server(env, tmp_path / "serve.log") as base, chromium() as page:
        root = base.removesuffix("/v1")
        assert httpx.get(f"{root}/ui/vendor/uplot/uPlot.iife.min.js").status_code == 200  # served, no CDN
        # The pages re-render as they update (a refused key redraws the key form): a wait that finds
        # an element the page has just replaced looks again rather than failing.
        wait = WebDriverWait(page, 30, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
        page.get(root + "/")

        # A wrong key is refused with the API's message; the right one, once, is kept in sessionStorage.
        page.find_element(By.ID, "api-key").send_keys("sk-whet-not-a-real-key-0000")
        page.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait.until(lambda p: "Incorrect API key" in p.find_element(By.ID, "key-form").text)
        assert page.execute_script("return sessionStorage.getItem('whetstone.apiKey')") is None
        page.find_element(By.ID, "api-key").clear()
        page.find_element(By.ID, "api-key").send_keys(key)
        page.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait.until(lambda p: p.find_elements(By.ID, "dropzone"))
        assert page.execute_script("return sessionStorage.getItem('whetstone.apiKey')") == key

        # A broken file: refused, and the message sits under its offending line.
        page.execute_script(DROP, "broken.jsonl", "\n".join(broken) + "\n")
        bad = wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#upload-error .line.bad"))
        assert bad[0].get_attribute("data-line") == "3"
        assert "line 3: invalid JSON" in page.find_element(By.CSS_SELECTOR, "#upload-error .error").text
        assert "invalid JSON" in page.find_element(By.CSS_SELECTOR, "#upload-error .why").text
        page.save_screenshot(str(shots / "files-error.png"))

        # Two good files (training, validation): the progress bar fills, the table lists them.
        valid = good + good.splitlines()[0] + "\n"  # its line 21 repeats line 1: a validation warning
        for name, text in (("train.jsonl", good), ("valid.jsonl", valid)):
            page.execute_script(DROP, name, text)
            wait.until(lambda p, name=name: name in p.find_element(By.ID, "files-body").text)
        assert float(page.find_element(By.ID, "upload-progress").get_attribute("value")) == 1.0
        rows = page.find_elements(By.CSS_SELECTOR, "#files-body tr")
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["valid.jsonl", "train.jsonl"]
        # Validation findings sit under the lines they name.
        rows[0].find_element(By.CSS_SELECTOR, "button.validate").click()
        wait.until(lambda p: "valid.jsonl: valid" in p.find_element(By.ID, "file-details").text)
        marked = page.find_elements(By.CSS_SELECTOR, "#validation .line.warn")
        assert marked and marked[-1].get_attribute("data-line") == "21"
        assert "duplicate" in page.find_element(By.CSS_SELECTOR, "#validation .why.warn").text
        page.save_screenshot(str(shots / "files.png"))
        train_id, valid_id = rows[1].get_attribute("data-file-id"), rows[0].get_attribute("data-file-id")

        # New job on the tiny model, with a validation file.
        page.get(root + "/#/new")
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, f"#model option[value='{TINY}']"))
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, f"#validation-file option[value='{valid_id}']"))
        Select(page.find_element(By.ID, "model")).select_by_value(TINY)
        Select(page.find_element(By.ID, "training-file")).select_by_value(train_id)
        Select(page.find_element(By.ID, "validation-file")).select_by_value(valid_id)
        page.find_element(By.ID, "hp-n_epochs").send_keys("3")
        page.find_element(By.ID, "suffix").send_keys("dash")
        page.save_screenshot(str(shots / "new-job.png"))
        page.find_element(By.ID, "create-job").click()
        wait.until(lambda p: "#/jobs/ftjob" in p.current_url)
        job_id = page.current_url.rsplit("/", 1)[1]

        # The chart gains points while the job runs (read from the page, as often as it changes).
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            points, status, stream = page.execute_script(READ_JOB_PAGE)  # at one instant (the page redraws)
            if not seen or seen[-1] != (points, status):
                seen.append((points, status))
                if status == "running" and points >= 3 and not (shots / "job-training.png").exists():
                    page.save_screenshot(str(shots / "job-training.png"))
            if status == "succeeded" and stream == "finished":
                break
            time.sleep(0.1)
        assert seen[-1][1] == "succeeded", seen
        while_running = sorted({n for n, s in seen if s == "running" and n > 0})
        assert len(while_running) >= 2, seen  # at least two different counts drawn before it ended
        final = seen[-1][0]
        assert final > while_running[0]
        assert int(page.find_element(By.ID, "loss-chart").get_attribute("data-valid-points")) >= 1
        # What the chart shows is what the API recorded.
        events = httpx.get(f"{base}/fine_tuning/jobs/{job_id}/events", params={"limit": 1000},
                           headers={"Authorization": f"Bearer {key}"}).json()["data"]
        steps = {e["data"]["step"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]}
        assert final == len(steps)
        assert "The job has successfully completed" in page.find_element(By.ID, "event-log").text
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#checkpoints-body code"))
        assert not page.find_element(By.ID, "download-adapter").get_attribute("disabled")
        page.save_screenshot(str(shots / "job.png"))

        # The browser's SSE reader sees what the server sent, and resumes after a Last-Event-ID.
        ids = sse_ids(base, key, job_id)
        page.set_script_timeout(30)
        assert page.execute_async_script(READ_STREAM, job_id, None) == [*ids, "DONE"]
        middle = ids[len(ids) // 2]
        assert page.execute_async_script(READ_STREAM, job_id, middle) == [*ids[len(ids) // 2 + 1:], "DONE"]

        page.get(root + "/#/jobs")
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, f"#jobs-body tr[data-job-id='{job_id}'][data-status='succeeded']"))
        page.save_screenshot(str(shots / "jobs.png"))

        # Playground: the base model and the fine-tune answer the same prompt, both streamed.
        page.get(f"{root}/#/jobs/{job_id}")
        wait.until(lambda p: click_if_there(p, By.ID, "try-model"))
        tuned = wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#tuned-model option:checked"))[0]
        assert tuned.get_attribute("value").startswith(f"ft:{TINY}:dash:dash:")
        Select(page.find_element(By.ID, "base-model")).select_by_value(TINY)
        page.find_element(By.ID, "prompt").send_keys("What is 2 plus 2?")
        page.find_element(By.ID, "send-prompt").click()
        for side in ("base", "tuned"):
            wait.until(lambda p, side=side: p.find_element(By.ID, f"{side}-answer").get_attribute("data-state") != "streaming")
            answer = page.find_element(By.ID, f"{side}-answer")
            assert answer.get_attribute("data-state") == "done", answer.text
            assert answer.text.strip()
            assert "chunks" in page.find_element(By.ID, f"{side}-stats").text
        page.save_screenshot(str(shots / "playground.png"))
        # Pause, resume and cancel a second, longer job from its page.
        long_job = httpx.post(f"{base}/fine_tuning/jobs", headers={"Authorization": f"Bearer {key}"},
                              json={"model": TINY, "training_file": train_id, "hyperparameters": {"n_epochs": 20}}).json()
        page.get(f"{root}/#/jobs/{long_job['id']}")
        slow = WebDriverWait(page, 90, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
        for button, statuses in (("pause-job", {"paused"}), ("resume-job", {"queued", "running"}),
                                 ("cancel-job", {"cancelled"})):
            slow.until(lambda p, button=button: p.execute_script(PRESS, button))
            slow.until(lambda p, statuses=statuses: p.execute_script(STATUS) in statuses)
        page.save_screenshot(str(shots / "job-cancelled.png"))
        assert httpx.get(f"{base}/fine_tuning/jobs/{long_job['id']}",
                         headers={"Authorization": f"Bearer {key}"}).json()["status"] == "cancelled"

        # No script error on any page (the refused upload's 400 is a network entry, not one).
        errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
        assert not errors, json.dumps(errors, indent=1)
