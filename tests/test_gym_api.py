"""The gym API: registry (direct, decorator, entry-point plugins), reset/step/score/score_batch, think-stripping,
killable timeouts from a worker thread, and infrastructure errors reported as such."""

import contextlib
import re
import sys
import textwrap
import threading
import time

import pytest

import prorl
from prorl.envs import Score, Task, list_envs, make, register, reload_plugins, split_think
from prorl.envs.registry import spec

from _envs_for_tests import EchoEnv, MatchDetailsEcho, ThreadEcho


@pytest.fixture(scope="module")
def echo_id():
    register("test/echo", "_envs_for_tests:EchoEnv", description="test: exact match", override=True)
    return "test/echo"


def test_builtin_ids_and_every_reasoning_gym_task_are_listed():
    from reasoning_gym.factory import DATASETS

    envs = list_envs()
    assert {"math", "stem", "logic"} <= set(envs)
    assert {f"logic/{name}" for name in DATASETS} <= set(envs)
    assert len(DATASETS) == 106
    assert all(isinstance(d, str) and d for k, d in envs.items() if k.startswith(("math", "stem", "logic")))


def test_register_with_a_string_entry_point_and_defaults(echo_id):
    env = make(echo_id)
    assert isinstance(env, EchoEnv) and env.id == echo_id
    register("test/echo-seeded", EchoEnv, seed=3, override=True)
    a, b = make("test/echo-seeded"), make("test/echo-seeded", seed=3)
    assert a.reset()[0] == b.reset()[0]
    with pytest.raises(TypeError, match="unknown arguments"):
        make(echo_id, bogus=1)


def test_register_as_decorator_and_duplicate_ids():
    @register("test/decorated", description="decorated env")
    class Decorated(EchoEnv):
        pass

    assert isinstance(make("test/decorated"), Decorated)
    assert list_envs()["test/decorated"] == "decorated env"
    with pytest.raises(ValueError, match="already registered"):
        register("test/decorated", EchoEnv)
    register("test/decorated", EchoEnv, override=True)
    assert type(make("test/decorated")) is EchoEnv


def test_an_entry_point_that_names_nothing_is_refused_when_registered():
    """Before: `register("x", "json")` was accepted and `make` failed with "module 'json' has no attribute ''" (and
    `register("x", 5)` with "'int' object is not callable")."""
    for bad in ("json", ":Env", "json:", 5):
        with pytest.raises(ValueError, match=r"'test/bad-ep': the entry point must be an Env class, a function "
                                             r"returning an Env or a 'module:attr' string, got"):
            register("test/bad-ep", bad)
    assert "test/bad-ep" not in list_envs()


def test_a_key_error_inside_an_env_constructor_is_not_an_unknown_environment(tmp_path, capsys, monkeypatch):
    """An env whose __init__ looks up a missing key (LEVELS[level]). Before: make() let the KeyError out, which every
    caller reads as "unknown environment": `prorl score` printed `in.jsonl:1: 3`, `prorl train` `error: 3`."""
    from prorl.cli import main

    class Levels(EchoEnv):
        def __init__(self, level=3, **kwargs):
            super().__init__(**kwargs)
            self.length = {1: 3, 2: 5}[level]

    register("test/levels", Levels, override=True)
    assert make("test/levels", level=1).length == 3
    with pytest.raises(RuntimeError, match=r"environment 'test/levels' failed to build: KeyError\(3\)"):
        make("test/levels")
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps the error line at the terminal width
    (tmp_path / "in.jsonl").write_text('{"env": "test/levels", "q": "say 1", "answer": "1", "completion": "1"}\n')
    assert main(["score", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--workers", "0"]) == 1
    assert "in.jsonl:1: environment 'test/levels' failed to build: RuntimeError(" in capsys.readouterr().err


def test_registering_the_same_class_again_replaces_it():
    """A notebook cell or a module run twice defines a new class object of the same name: it replaces the old one
    instead of raising (a different class under the same id still raises)."""
    def define():
        @register("test/rerun")
        class Rerun(EchoEnv):
            pass
        return Rerun

    first, second = define(), define()
    assert first is not second and type(make("test/rerun")) is second


def test_unknown_id_names_itself():
    with pytest.raises(KeyError, match="logic/no_such_task"):
        make("logic/no_such_task")
    with pytest.raises(ValueError):
        register("", EchoEnv)


def test_reset_and_step_follow_gymnasium(echo_id):
    env = make(echo_id)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("1")
    obs, info = env.reset(seed=7)
    assert obs == env.reset(seed=7)[0]
    task = info["task"]
    assert isinstance(task, Task) and obs == task.prompt and obs[0]["role"] == "user"
    obs2, reward, terminated, truncated, info2 = env.step(task.reference["answer"])
    assert (obs2, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info2["score"].status == "ok"
    _, reward, *_ = env.step("wrong")
    assert reward == 0.0


def test_reset_draws_from_a_given_dataset_and_options(echo_id):
    rows = [{"q": "say 4", "answer": "4"}, {"q": "say 5", "answer": "5"}]
    env = make(echo_id, dataset=rows, seed=0)
    seen = {env.reset()[1]["task"].reference["answer"] for _ in range(20)}
    assert seen == {"4", "5"}
    _, info = env.reset(options={"task": {"q": "say 9", "answer": "9"}})
    assert info["task"].reference["answer"] == "9"
    assert [t.reference["answer"] for t in env.sample_tasks(3)] == ["4", "5", "4"]
    with pytest.raises(ValueError, match="empty"):
        make(echo_id, dataset=[]).reset()


def test_score_standalone_and_think_stripping(echo_id):
    env = make(echo_id)
    task = {"q": "say 3", "answer": "3"}
    assert env.score("3", task).status == "ok"
    s = env.score("<think>maybe 4... no</think> 3", task)
    assert s.status == "ok" and s.details["think"] is True
    assert env.score("<think>3</think>4", task).status == "wrong"  # only the text after </think> counts
    s = env.score("<think>3 is the answer", task)
    assert (s.status, s.reward) == ("format_error", 0.0)
    assert env.score(None, task).status == "format_error"
    assert "bad task" in env.score("3", {"answer": "3"}).details["error"]  # missing "q"
    assert split_think("a</think>b</think>c") == ("c", True)
    assert split_think("plain") == ("plain", False)
    assert split_think("<think>x</think>\n\n a\n\nb \n") == ("a\n\nb \n", True)  # the template's separator goes
    assert split_think("<THINK>x</THINK> 3") == ("3", True)  # closing tags in any case, as opening ones
    for env_id, reference in (("math", {}), ("logic/chain_sum", {}), ("code", {"tests": []}), ("stem", {"gold": 1})):
        s = make(env_id).score("\\boxed{1} <answer>1</answer>", {"prompt": "x", "reference": reference})
        assert s.status == "format_error" and "reference has no field" in s.details["error"], (env_id, s)
    # the Task dict form (Task.to_dict) round-trips
    t = env.task_from_dict(task)
    assert env.score("3", t.to_dict()).status == "ok"


def test_a_verify_that_does_not_return_a_score_names_the_env():
    class Sloppy(EchoEnv):
        def verify(self, answer, task):
            return 1.0

    with pytest.raises(TypeError, match="Sloppy.verify returned float, not a Score"):
        Sloppy().score("3", {"q": "say 3", "answer": "3"})


def test_score_batch_scores_an_env_as_it_is_now():
    """Workers keep the environments they were sent: one changed after a first batch is sent again; and more
    distinct environments than a worker keeps are re-sent once evicted, not lost."""
    from prorl.envs.workers import _KEEP_ENVS

    env, task, reply = make("math"), {"problem": "1+1?", "answer": "2"}, "The answer is 2"
    assert env.score_batch([reply], [task], workers=1)[0].status == "format_error"  # nothing boxed
    env.require_boxed = False
    assert env.score(reply, task).status == env.score_batch([reply], [task], workers=1)[0].status == "ok"
    envs = [make("math", require_boxed=False) for _ in range(_KEEP_ENVS + 6)]
    for i, e in enumerate(envs):
        e.tag = i  # distinct pickled contents
        assert e.score_batch([reply], [task], workers=1)[0].status == "ok"
    assert envs[0].score_batch([reply], [task], workers=1)[0].status == "ok"  # evicted by the worker: sent again


def test_score_validates_reward_and_status():
    with pytest.raises(ValueError):
        Score(1.5, "ok")
    with pytest.raises(ValueError):
        Score(0.5, "partial")
    assert Score(0, "timeout").masked and not Score(0, "wrong").masked
    assert Score.graded(0.5).status == "wrong" and Score.graded(1.0).status == "ok"
    # a reward summed from fractions rounds just past a bound: clipped, not refused (before: infra_error, masked)
    full, none = Score.graded(0.2 + 0.4 + 0.3 + 0.1), Score.graded(0.3 - 0.1 - 0.2)  # 1 + 2e-16, -3e-17
    assert (full.reward, full.status, none.reward, none.status) == (1.0, "ok", 0.0, "wrong")
    for bad in (1.0001, -0.0001, float("nan")):
        with pytest.raises(ValueError, match="must be in"):
            Score(bad, "wrong")


def test_score_reward_must_be_a_real_number():
    """Before the fix Score("1", "ok") was accepted (float("1") is 1.0) and Score.graded("1") failed comparing a str
    with a float. Now anything but a real number is a TypeError naming the field; numpy numbers and bools (a verdict
    `answer == gold` given as the reward) are stored as floats."""
    import numpy as np

    for bad, shown in (("1", "str '1'"), (None, "NoneType None"), (b"1", "bytes b'1'"), (1j, "complex 1j")):
        for make_score in (lambda v: Score(v, "ok"), Score.graded):
            with pytest.raises(TypeError, match=rf"^Score\.reward must be a real number \(int, float or bool\), got "
                                                rf"{re.escape(shown)}$"):
                make_score(bad)
    for good in (np.float64(0.5), np.float32(0.5), np.int64(0), 1, 0.25, True, False, np.bool_(True)):
        score = Score.graded(good)
        assert type(score.reward) is float and score.reward == float(good)
        assert score.status == ("ok" if float(good) == 1.0 else "wrong")


def test_score_batch_keeps_order_and_reports_failures_as_such(echo_id):
    env = make(echo_id)
    tasks = [{"q": f"say {i}", "answer": str(i)} for i in range(6)]
    comps = ["0", "x", "RAISE", "DIE", "4", "<think>5"]
    scores = env.score_batch(comps, tasks, workers=2, timeout_s=20)
    assert [s.status for s in scores] == ["ok", "wrong", "infra_error", "infra_error", "ok", "format_error"]
    assert "verifier bug" in scores[2].details["error"]
    assert "died" in scores[3].details["error"]
    # the pool recovered from the dead worker
    assert [s.status for s in env.score_batch(["1", "2"], tasks[1:3], workers=2)] == ["ok", "ok"]
    with pytest.raises(ValueError):
        env.score_batch(["1"], tasks, workers=2)


def test_a_verdict_whose_details_cannot_be_pickled_comes_back_from_the_worker():
    """A verifier keeping a `re.Match` in `details` scores in workers as it does inline: the verdict stands, the value
    comes back as its repr. Before: the worker died sending it, was restarted, died again, and the sample was an
    `infra_error` ("scoring worker died: EOFError()")."""
    env = MatchDetailsEcho()
    tasks = [{"q": "say 1", "answer": "1"}, {"q": "say 2", "answer": "2"}]
    inline = env.score_batch(["1", "x"], tasks, workers=0)
    scores = env.score_batch(["1", "x"], tasks, workers=1, timeout_s=30)
    assert [(s.reward, s.status) for s in scores] == [(s.reward, s.status) for s in inline] == [(1.0, "ok"),
                                                                                                (0.0, "wrong")]
    assert scores[0].details == {"match": repr(inline[0].details["match"]), "answer": "1"}
    assert scores[1].details == {"match": None, "answer": "x"}


def test_inline_and_thread_scoring_paths():
    env = ThreadEcho()
    tasks = [{"q": "say 1", "answer": "1"}, {"q": "say 2", "answer": "2"}]
    assert [s.status for s in env.score_batch(["1", "RAISE"], tasks, workers=2)] == ["ok", "infra_error"]
    assert [s.status for s in EchoEnv().score_batch(["1", "RAISE"], tasks, workers=0)] == ["ok", "infra_error"]


def test_hanging_verifier_times_out_from_a_worker_thread(echo_id):
    """A verifier stuck in pure Python (no signal can stop it outside the main thread) is killed in time."""
    env = make(echo_id)
    tasks = [{"q": f"say {i}", "answer": str(i)} for i in range(4)]
    result = {}

    def run():
        t0 = time.monotonic()
        result["scores"] = env.score_batch(["HANG", "1", "SLEEP", "3"], tasks, workers=2, timeout_s=1.0)
        result["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert [s.status for s in result["scores"]] == ["timeout", "ok", "timeout", "ok"]
    assert all(s.details["elapsed_s"] <= 2.0 for s in result["scores"] if s.status == "timeout")
    assert result["elapsed"] < 2 * (1.0 + 1.0) + 5  # two timeouts in parallel, plus worker restarts


def _install_dist(site, module: str, entry_points: str) -> None:
    """The metadata of an installed distribution `module` with these `prorl.envs` entry points."""
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[prorl.envs]\n{entry_points}\n")


def test_installed_plugin_is_discovered_through_entry_points(tmp_path, monkeypatch):
    """A tiny third-party package with `prorl.envs` entry points (a class, and a function that registers)."""
    site = tmp_path / "site"
    pkg = site / "prorl_plugin_demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import prorl
        from prorl.envs import Env, Score, Task

        class ShoutEnv(Env):
            """test plugin: reward 1 for an upper-case answer"""

            def task_from_dict(self, row):
                return Task(id="", env=self.id, prompt=[{"role": "user", "content": row["text"]}],
                            reference={"text": row["text"]})

            def generate(self, rng):
                return {"text": "hello"}

            def verify(self, answer, task):
                return Score.graded(float(answer.strip() == task.reference["text"].upper()))

        def register_all():
            prorl.register("plugin/shout-loud", ShoutEnv, description="test plugin via a function")
    '''))
    _install_dist(site, "prorl_plugin_demo",
                  "plugin/shout = prorl_plugin_demo:ShoutEnv\nplugin-family = prorl_plugin_demo:register_all")
    monkeypatch.syspath_prepend(str(site))
    reload_plugins()
    assert "plugin/shout" in list_envs() and "plugin/shout-loud" in list_envs()
    env = make("plugin/shout")
    obs, info = env.reset()
    assert obs[0]["content"] == "hello"
    assert env.step("HELLO")[1] == 1.0
    # the plugin env crosses into the scoring worker processes too
    scores = make("plugin/shout-loud").score_batch(["HI", "hi"], [{"text": "hi"}] * 2, workers=2)
    assert [s.status for s in scores] == ["ok", "wrong"]
    assert spec("plugin/shout").description.startswith("test plugin")


def test_a_plugin_whose_registration_raises_breaks_neither_make_nor_other_plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "prorl_broken_plugin.py").write_text(textwrap.dedent('''
        import prorl
        from _envs_for_tests import EchoEnv

        def broken():
            raise RuntimeError("plugin bug")

        def fine():
            prorl.register("plugin/after-broken", EchoEnv, override=True)
    '''))
    _install_dist(site, "prorl_broken_plugin", "broken = prorl_broken_plugin:broken\nfine = prorl_broken_plugin:fine")
    monkeypatch.syspath_prepend(str(site))
    reload_plugins()  # used to raise the plugin's RuntimeError out of the first make/list_envs
    assert make("math").id == "math"
    assert "plugin/after-broken" in list_envs()


def test_a_plugin_whose_id_is_taken_is_reported_not_dropped_silently(tmp_path, monkeypatch, caplog):
    """An entry point `math = pkg:Env` cannot replace the built-in `math`: it is left out with a warning naming both.
    Before: left out without a word (`prorl envs` showed the built-in's description). A package that registers its
    own class at import under the entry point's name (as "module:attr") is not warned about."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "prorl_taken_plugin.py").write_text(textwrap.dedent('''
        import prorl
        from _envs_for_tests import EchoEnv

        class Mine(EchoEnv):
            """test plugin"""

        prorl.register("plugin/self-registered", "prorl_taken_plugin:Mine", override=True)
    '''))
    _install_dist(site, "prorl_taken_plugin",
                  "math = prorl_taken_plugin:Mine\nplugin/self-registered = prorl_taken_plugin:Mine")
    monkeypatch.syspath_prepend(str(site))
    with caplog.at_level("WARNING", logger="prorl.envs.registry"):
        reload_plugins()
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["prorl.envs plugin 'math' (prorl_taken_plugin.Mine) is not registered: the id is already "
                        "taken by 'prorl.envs.math:MathEnv'"]
    assert type(make("math")).__name__ == "MathEnv" and type(make("plugin/self-registered")).__name__ == "Mine"

def test_top_level_api_is_exported():
    assert prorl.make is make and prorl.register is register and prorl.list_envs is list_envs


def test_env_defined_in_a_user_script_scores_in_workers(tmp_path):
    """An Env subclass written in the user's `__main__` (a training script) is shipped to the scoring workers."""
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(
        "import prorl\n"
        "@prorl.register('user/echo')\n"
        "class Echo(prorl.Env):\n"
        "    def task_from_dict(self, row):\n"
        "        return prorl.Task(id='t', env=self.id, prompt=[], reference={'word': row['word']})\n"
        "    def verify(self, answer, task):\n"
        "        return prorl.Score.graded(float(answer.strip() == task.reference['word']))\n"
        "env = prorl.make('user/echo')\n"
        "scores = env.score_batch(['hi', 'ho'], [{'word': 'hi'}] * 2, workers=1, timeout_s=30)\n"
        "print([s.status for s in scores])\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['ok', 'wrong']"


_ECHO_MODULE = (
    "import prorl\n"
    "class Echo(prorl.Env):\n"
    "    def task_from_dict(self, row):\n"
    "        return prorl.Task(id='t', env=self.id, prompt=[], reference={'word': row['word']})\n"
    "    def verify(self, answer, task):\n"
    "        return prorl.Score.graded(float(answer.strip() == task.reference['word']))\n"
)


def _score_after_chdir(tmp_path, before: str = "") -> list:
    """`python -c` (sys.path[0] == '') run in tmp_path/proj: import the env module written there, chdir away, then
    score two samples in a worker; returns [(status, details.error)]."""
    import json
    import subprocess

    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    (proj / "my_chdir_env.py").write_text(_ECHO_MODULE)
    code = ("import json, os, my_chdir_env\n" + before
            + f"os.chdir({str(elsewhere)!r})\n"
            "scores = my_chdir_env.Echo().score_batch(['hi', 'ho'], [{'word': 'hi'}] * 2, workers=1, timeout_s=30)\n"
            "print(json.dumps([[s.status, s.details.get('error')] for s in scores]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=proj, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_env_module_imported_from_the_cwd_scores_in_workers_after_a_chdir(tmp_path):
    """Before: in `python -c` or a notebook ('' on sys.path), an os.chdir between `import my_env` and the first
    score_batch left the workers unable to import the env's module: `infra_error ModuleNotFoundError` for every
    sample. The workers now get the folder the module was imported from."""
    assert _score_after_chdir(tmp_path) == [["ok", None], ["wrong", None]]


def test_an_env_the_workers_cannot_load_names_why_on_every_sample(tmp_path):
    """The module is gone by the time the worker imports it: each sample says so, not the first only (before: the
    second, sent without the env, was `KeyError('<cache key>')` from the worker's cache)."""
    gone = "os.remove(my_chdir_env.__file__)\n"
    results = _score_after_chdir(tmp_path, before=gone)
    assert [r[0] for r in results] == ["infra_error"] * 2, results
    assert all("could not load the environment" in r[1] and "my_chdir_env" in r[1] for r in results), results


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_workers_inside_a_hung_verifier_die_with_a_killed_caller(tmp_path):
    """Before: a SIGTERM or SIGKILL of the scoring process (`prorl score` stopped with `kill`, a preempted training
    job) runs no atexit hook, and each worker inside a hung verifier (a LaTeX bomb) spun on, orphaned, for as long as
    the verifier took. Each worker now dies with its parent."""
    import signal
    import subprocess

    psutil = pytest.importorskip("psutil")  # installed with accelerate

    busy = tmp_path / "busy"
    busy.mkdir()
    script = tmp_path / "user_script.py"
    script.write_text(
        "import os, pathlib, prorl\n"
        "@prorl.register('user/spin')\n"
        "class Spin(prorl.Env):\n"
        "    def task_from_dict(self, row):\n"
        "        return prorl.Task(id='t', env=self.id, prompt=[], reference={})\n"
        "    def verify(self, answer, task):\n"
        f"        pathlib.Path({str(busy)!r}, str(os.getpid())).touch()\n"
        "        while True:\n"
        "            pass\n"
        "prorl.make('user/spin').score_batch(['a', 'b'], [{}] * 2, workers=2, timeout_s=600)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(list(busy.iterdir())) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [psutil.Process(int(p.name)) for p in busy.iterdir()]
        assert len(workers) == 2 and all(w.ppid() == proc.pid for w in workers)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers outlived their parent: {alive}"
    finally:
        proc.kill()
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()


def test_reset_and_sample_tasks_take_tasks_as_score_does():
    """A Task, or a Task's dict (Task.to_dict(): the trainer's `task` column, a saved gym dataset), is a task for
    `reset(options={"task": ...})`, a `dataset=[...]` row and `sample_tasks`, as it is for `score`. Before: KeyError
    'answer' from reset and sample_tasks on a Task dict, TypeError from sample_tasks on a Task object."""
    for env_id, row, right in [("math", {"problem": "What is 2+3?", "answer": "5"}, "\\boxed{5}"),
                               ("stem", {"question": "Pick y.", "options": ["x", "y"], "answer": "B"}, "Answer: B")]:
        env = make(env_id)
        _, info = env.reset(options={"task": row})
        task = info["task"]
        assert env.score(right, task.to_dict()).status == "ok"
        obs, info = env.reset(options={"task": task.to_dict()})
        assert obs == task.prompt and info["task"] == task
        assert env.step(right)[1] == 1.0 and env.step("\\boxed{7}")[1] == 0.0
        for rows in ([task], [task.to_dict()]):
            assert make(env_id, dataset=rows).sample_tasks(2) == [task, task]
            assert make(env_id, dataset=rows, seed=0).reset()[1]["task"] == task


def test_a_timeout_or_worker_count_that_cannot_score_is_refused():
    """score_batch(timeout_s=-1) (or 0, or NaN) and workers=-1 are errors. Before: every sample came back a masked
    `timeout` after 0 s (-1), or a ValueError from the thread pool naming max_workers (-1)."""
    env = make("math")
    for kwargs in ({"timeout_s": -1}, {"timeout_s": 0}, {"timeout_s": float("nan")}, {"workers": -1}):
        with pytest.raises(ValueError, match=r"score_many: workers must be >= 0 and timeout_s > 0 \(or None\)"):
            env.score_batch(["\\boxed{5}"], [{"answer": "5"}], **{"workers": 1, **kwargs})
    assert env.score_batch(["\\boxed{5}"], [{"answer": "5"}], workers=1, timeout_s=5)[0].status == "ok"


def test_an_unknown_id_suggests_a_close_one_and_says_how_an_own_env_is_seen():
    """Before: `make("my/echo")` in a process where the user's env was not registered suggested
    `similar: ['logic/emoji_mystery']` ("my" is in "emoji_mystery") and did not say how a custom env becomes known to
    the `prorl` commands; a typo such as "mathh" or "Math" got no suggestion at all."""
    with pytest.raises(KeyError) as exc:
        make("my/echo")
    message = exc.value.args[0]
    assert "emoji_mystery" not in message and "entry-point group 'prorl.envs'" in message
    for typo, meant in (("mathh", "'math'"), ("Math", "'math'"), ("logic/chain_summ", "'logic/chain_sum'")):
        with pytest.raises(KeyError, match=f"unknown environment '{typo}': did you mean {meant}"):
            make(typo)
    # no close id: the ids of the family named before the '/' (as the message said before, without the false hits)
    for unknown, listed in (("logic/zzzzqqq", "'logic' ids: ['logic', 'logic/ab'"),
                            ("code/humaneval", "'code' ids: ['code']")):
        with pytest.raises(KeyError, match=re.escape(f"unknown environment '{unknown}'; {listed}")):
            make(unknown)


def test_an_env_whose_init_skips_super_init_says_so():
    """Before: `reset()` raised `AttributeError: 'NoSuperInitEcho' object has no attribute 'dataset'`, naming neither
    the cause (an `__init__` without `super().__init__()`) nor the fix."""
    register("test/no-super", "_envs_for_tests:NoSuperInitEcho", override=True)
    env = make("test/no-super")
    for call in (lambda: env.reset(seed=0), lambda: env.step("1"), lambda: env.sample_tasks(2)):
        with pytest.raises(TypeError, match=r"NoSuperInitEcho.__init__ does not call super\(\).__init__\(\)"):
            call()
    assert env.score("1", {"q": "say 1", "answer": "1"}).reward == 1.0  # scoring needs no state of Env.__init__


def test_registering_a_taken_id_names_what_holds_it():
    """Before: `environment 'math' is already registered (pass override=True to replace it)`, not saying by what
    (a user's id taken by an installed plugin, or a built-in, is only found by reading the registry)."""
    with pytest.raises(ValueError, match=r"'math' is already registered, as 'prorl.envs.math:MathEnv' \(a built-in"):
        register("math", EchoEnv)
    register("test/taken", EchoEnv, override=True)
    with pytest.raises(ValueError, match=r"'test/taken' is already registered, as _envs_for_tests:EchoEnv"):
        register("test/taken", ThreadEcho)


def test_a_task_from_dict_that_returns_no_task_names_the_env():
    """Before: a task_from_dict returning a dict scored as `AttributeError: 'dict' object has no attribute
    'reference'` from inside verify (an infra_error in score_batch), and reset() raised the same about 'prompt'."""
    register("test/dict-task", "_envs_for_tests:DictTaskEcho", override=True)
    env = make("test/dict-task")
    row = {"q": "say 1", "answer": "1"}
    message = "DictTaskEcho.task_from_dict returned dict, not a Task"
    with pytest.raises(TypeError, match=message):
        env.reset(options={"task": row})
    with pytest.raises(TypeError, match=message):
        make("test/dict-task", seed=0).sample_tasks(1)
    for score in [env.score("1", row), *env.score_batch(["1"], [row], workers=1)]:
        assert score.status == "format_error" and message in score.details["error"]


def test_a_generate_that_hangs_is_stopped_at_the_envs_timeout_and_named():
    """Before: a custom env's generate() that never returned stalled sample_tasks (so `prorl train --gym_envs`) for
    ever, without a word. Now the env's timeout_s (1 s here) stops it with an error naming the env's generate."""
    from prorl.train import gym_dataset

    register("test/gen-hang", "_envs_for_tests:HangingGeneratorEcho", override=True)
    message = "HangingGeneratorEcho.generate did not return within 1 s (the env's timeout_s)"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        make("test/gen-hang").sample_tasks(3)
    assert str(err.value) == message and time.monotonic() - t0 < 10
    assert len(make("test/gen-hang").sample_tasks(2)) == 2  # the tasks before the hang were fine
    with pytest.raises(TimeoutError) as err:
        gym_dataset(["test/gen-hang"], 3)
    assert str(err.value) == f"gym_envs: 'test/gen-hang': {message}"
