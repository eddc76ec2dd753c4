"""Hold-out by recency: git and mtime splits of small projects built in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rubytailor.errors import RubytailorError
from rubytailor.personalization import holdout
from rubytailor.personalization.holdout import Split, git_split, recency_split, time_split_commit
from rubytailor.training.eval_cases import Case, line_cases

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

KEY_BLOCK = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"


class Repo:
    """A git repository in a temporary directory, with reproducible commits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.commits: list[str] = []  # oldest first
        self.git("init", "-q")

    def git(self, *args: str, day: int = 1) -> str:
        date = f"2024-01-{day:02d}T12:00:00Z"
        env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "Test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_DATE": date,
        }
        proc = subprocess.run(
            ["git", "-C", str(self.root), *args],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        return proc.stdout.strip()

    def write(self, files: dict[str, str | None]) -> None:
        for rel, text in files.items():
            path = self.root / rel
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)

    def commit(self, files: dict[str, str | None], *, force: tuple[str, ...] = ()) -> str:
        self.write(files)
        self.git("add", "-A")
        if force:
            self.git("add", "-f", *force)
        day = len(self.commits) + 1
        self.git("commit", "-q", "--allow-empty", "-m", f"commit {day}", day=day)
        self.commits.append(self.git("rev-parse", "HEAD"))
        return self.commits[-1]


def ruby(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines)


def name(root: Path, rel: str) -> str:
    return str(root / rel)


def case_line(case: Case) -> str:
    return case.prefix.rsplit("\n", 1)[-1] + case.answer


def check_cases_reconstruct(split: Split) -> None:
    texts = dict(split.eval_files)
    for case in split.cases:
        assert case.kind == "line"
        assert case.prefix + case.answer + case.suffix == texts[case.source]
        assert case.answer.strip()
        assert case.suffix == "" or case.suffix.startswith("\n")
        line = texts[case.source].split("\n")[case.line]
        assert case_line(case) == line
        indent = len(line) - len(line.lstrip(" \t"))
        assert len(case.prefix.rsplit("\n", 1)[-1]) >= indent


@pytest.fixture
def no_git_above(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep git from finding a repository above tmp_path (a checkout the tests run in)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))


# --- git split -------------------------------------------------------------------------------

USER_V1 = ruby("class User", "  def name_old", "    @name_old_value", "  end", "end")
USER_V2 = ruby(
    "class User",
    "  def name_old",
    "    @name_old_value",
    "  end",
    "",
    "  def email_old",
    "    @email_old_value",
    "  end",
    "end",
)
USER_NOW = ruby(
    "class User",
    "  def name_old",
    "    @name_new_value || fallback_new",  # modified: a new line
    "  end",
    "",
    "  # a comment_new is never a case",
    "  def email_old",
    "    @email_old_value",
    "  end",
    "",
    "  def age_new",
    "    compute_age_new(born_on)",
    "  end",
    "end",
)
POST_NOW = ruby("class PostNew", "  belongs_to :user_new", "end")


def build_history(tmp_path: Path) -> tuple[Repo, str]:
    """Two commits, a split at the second, a third commit, uncommitted and untracked work."""
    repo = Repo(tmp_path / "app")
    repo.commit({"app/models/user.rb": USER_V1, "lib/legacy.rb": ruby("module LegacyOld; end")})
    split = repo.commit({"app/models/user.rb": USER_V2})
    repo.commit({"app/models/user.rb": USER_NOW, "lib/legacy.rb": None, "app/post.rb": POST_NOW})
    repo.write(
        {
            "app/post.rb": POST_NOW + ruby("PostNew.table_name_new = 'posts'"),
            "app/services/sync.rb": ruby("class SyncNew", "  def call_new = run_new", "end"),
        }
    )
    return repo, split


def expected_new_lines() -> set[str]:
    """The code lines added since the split (each holds "new"; "end" is too short)."""
    texts = [USER_NOW, POST_NOW + "PostNew.table_name_new = 'posts'\n"]
    texts.append(ruby("class SyncNew", "  def call_new = run_new"))
    return {
        line
        for text in texts
        for line in text.split("\n")
        if "new" in line.lower() and not line.strip().startswith("#")
    }


def test_git_split_trains_on_the_split_commit_and_evaluates_added_lines(tmp_path: Path) -> None:
    repo, split_commit = build_history(tmp_path)
    root = repo.root
    split = git_split(root, split_commit, cases=1000, seed=3)
    assert split.method == "git"
    # Training is the project at the split commit, the file deleted since included.
    assert sorted(split.train_files) == [
        (name(root, "app/models/user.rb"), USER_V2),
        (name(root, "lib/legacy.rb"), ruby("module LegacyOld; end")),
    ]
    # Evaluation: every added code line (cases > candidates), nothing older.
    assert {case_line(c) for c in split.cases} == expected_new_lines()
    assert len(split.cases) == len(expected_new_lines())
    check_cases_reconstruct(split)
    assert dict(split.eval_files) == {
        name(root, "app/models/user.rb"): USER_NOW,
        name(root, "app/post.rb"): (root / "app/post.rb").read_text(),
        name(root, "app/services/sync.rb"): (root / "app/services/sync.rb").read_text(),
    }
    detail = split.detail
    assert detail["split_commit"] == split_commit
    assert detail["head_commit"] == repo.commits[-1]
    assert detail["commits_after"] == 1
    assert detail["split_time"] == "2024-01-02T12:00:00+00:00"
    assert detail["added_lines"] == len(expected_new_lines())
    assert detail["untracked_files"] == 1
    assert detail["train_bytes"] == len(USER_V2) + len("module LegacyOld; end\n")


def test_git_split_accepts_revisions_and_rejects_bad_ones(
    tmp_path: Path, no_git_above: None
) -> None:
    repo, split_commit = build_history(tmp_path)
    assert git_split(repo.root, "HEAD~1").detail["split_commit"] == split_commit
    with pytest.raises(RubytailorError, match="git rev-parse failed"):
        git_split(repo.root, "no-such-branch")
    with pytest.raises(RubytailorError, match="git rev-parse failed"):
        git_split(repo.root, "--output=/tmp/x")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.rb").write_text("puts 1\n")
    with pytest.raises(RubytailorError):
        git_split(plain, "HEAD")


def test_a_file_added_whole_gives_line_cases_own_cases(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "app")
    first = repo.commit({"a.rb": ruby("A_CONST = 1")})
    text = ruby(*(f"  value_{i} = compute({i}, :key_{i})" for i in range(40)))
    repo.commit({"b.rb": text})
    split = git_split(repo.root, first, cases=10, seed=7)
    assert split.cases == line_cases([(name(repo.root, "b.rb"), text)], 10, 7)


def test_awkward_names_and_lines_that_look_like_diff_headers(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "app")
    odd = ["app/my file é.rb", 'app/we"ird.rb', "app/tab\tname.rb"]
    before = ruby("OLD_CONSTANT = 1", "KEEP_ONE = 1", "KEEP_TWO = 2", "DROP_OLD = 3")
    first = repo.commit({rel: before for rel in odd})
    # In the diff body these read "+++ b/other.rb", "+--- a/other.rb": a parser that took them
    # for file headers would file the second hunk (NEW_CONSTANT) under other.rb.
    after = ruby("OLD_CONSTANT = 1", "++ b/other.rb", "--- a/other.rb", "@@ -1 +1,9 @@ not_a_hunk")
    after += ruby("KEEP_ONE = 1", "KEEP_TWO = 2", "NEW_CONSTANT = 2")
    repo.commit({rel: after for rel in odd})
    split = git_split(repo.root, first, cases=100)
    assert {c.source for c in split.cases} == {name(repo.root, rel) for rel in odd}
    lines = {case_line(c) for c in split.cases}
    assert lines == {
        "++ b/other.rb",
        "--- a/other.rb",
        "@@ -1 +1,9 @@ not_a_hunk",
        "NEW_CONSTANT = 2",
    }
    assert len(split.cases) == 4 * len(odd)
    check_cases_reconstruct(split)


def test_project_in_a_subdirectory_of_the_repository(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "mono")
    first = repo.commit({"web/app.rb": ruby("WEB_OLD = 1"), "other/x.rb": ruby("OTHER_OLD = 1")})
    repo.commit({"web/app.rb": ruby("WEB_OLD = 1", "WEB_NEW = 2"), "other/x.rb": ruby("OTHER_NEW")})
    root = repo.root / "web"
    split = git_split(root, first)
    assert split.train_files == [(name(root, "app.rb"), ruby("WEB_OLD = 1"))]
    assert [case_line(c) for c in split.cases] == ["WEB_NEW = 2"]


# --- filters ---------------------------------------------------------------------------------

PLANTED = {
    ".env": "SECRET_DOTENV_marker = 1\n",
    "config/master.key": "SECRET_MASTER_KEY_marker = 1\n",
    "config/credentials.yml.enc": "SECRET_CREDENTIALS_ENC_marker = 1\n",
    "config/credentials.rb": "SECRET_CREDENTIALS_RB_marker = 1\n",
    "id_rsa": "SECRET_ID_RSA_marker = 1\n",
    "server.pem": "SECRET_PEM_marker = 1\n",
    "app/keys.rb": "SECRET_KEY_MATERIAL_marker = 1\n" + KEY_BLOCK,
    "config/local.rb": "SECRET_GITIGNORED_marker = 1\n",
    "vendor/bundle/gems/x/lib/x.rb": "SECRET_VENDOR_marker = 1\n",
    "node_modules/pkg/lib/y.rb": "SECRET_NODE_MODULES_marker = 1\n",
    "app/generated.rb": "# This file is auto-generated.\nSECRET_GENERATED_marker = 1\n",
    "db/schema.rb": "SECRET_SCHEMA_marker = 1\n",
    "lib/private/hidden.rb": "SECRET_EXCLUDE_SETTING_marker = 1\n",
    "app/huge.rb": "SECRET_TOO_LARGE_marker = 1\n" + "x = 1\n" * 180_000,
}


def more(text: str, marker: str) -> str:
    return text + f"{marker.upper()}_again_marker = compute(2)\n"


def build_planted(tmp_path: Path) -> Repo:
    """Planted files committed before and changed after the split, some also left untracked."""
    repo = Repo(tmp_path / "app")
    gitignore = {".gitignore": "config/local.rb\n/untracked_ignored.rb\n"}
    clean = {"app/ok.rb": ruby("class Ok", "  def fine_old = 1", "end")}
    repo.commit({**gitignore, **clean, **PLANTED}, force=tuple(PLANTED))
    changed = {rel: more(text, "secret") for rel, text in PLANTED.items()}
    repo.commit(
        {**changed, "app/ok.rb": ruby("class Ok", "  def fine_new = 2", "end")},
        force=tuple(PLANTED),
    )
    repo.commit({"app/extra.rb": ruby("EXTRA_NEW = compute(3)")})
    repo.write(
        {
            "untracked_ignored.rb": "SECRET_UNTRACKED_IGNORED_marker = 1\n",
            "vendor/new/z.rb": "SECRET_UNTRACKED_VENDOR_marker = 1\n",
            "config/credentials_new.rb.key": "SECRET_UNTRACKED_KEY_marker = 1\n",
        }
    )
    return repo


def assert_no_secret(split: Split) -> None:
    texts = [t for _, t in split.train_files] + [t for _, t in split.eval_files]
    texts += [c.prefix + c.answer + c.suffix for c in split.cases]
    assert texts, "nothing left at all"
    assert not any("SECRET" in t for t in texts)
    names = [n for n, _ in split.train_files + split.eval_files] + [c.source for c in split.cases]
    assert all(n.endswith(("ok.rb", "extra.rb")) for n in names), names


def test_secrets_ignored_vendored_and_generated_never_appear(tmp_path: Path) -> None:
    repo = build_planted(tmp_path)
    exclude = ["lib/private/"]
    for commit in repo.commits[:2]:
        split = git_split(repo.root, commit, cases=100, exclude=exclude)
        assert_no_secret(split)
        assert split.train_files and split.cases
        assert split.detail["train_skipped"]["filtered"] >= 8
    split = recency_split(repo.root, min_added_lines=1000, exclude=exclude)
    assert split.method == "git"
    assert_no_secret(split)
    shutil.rmtree(repo.root / ".git")
    split = recency_split(repo.root, exclude=exclude)
    assert split.method == "mtime"
    assert_no_secret(split)


# --- choosing the split commit ---------------------------------------------------------------


def build_steady(tmp_path: Path, count: int = 20, lines: int = 10) -> Repo:
    """count commits, each adding a file of `lines` code lines."""
    repo = Repo(tmp_path / "app")
    for c in range(count):
        repo.commit(
            {f"lib/f{c}.rb": ruby(*(f"value_{c}_{i} = compute({i})" for i in range(lines)))}
        )
    return repo


def test_recency_split_walks_back_until_enough_lines_were_added(tmp_path: Path) -> None:
    repo = build_steady(tmp_path)
    for target, after in [(1, 1), (10, 1), (11, 2), (25, 3), (30, 3), (31, 4), (70, 7), (91, 10)]:
        split = recency_split(repo.root, min_added_lines=target, cases=5, max_commit_share=0.5)
        assert split.method == "git"
        assert split.detail["commits_after"] == after, target
        assert split.detail["split_commit"] == repo.commits[-1 - after]
        assert split.detail["added_lines"] == 10 * after
        assert split.detail["reached_min_added_lines"]
        assert len(split.train_files) == 20 - after
        check_cases_reconstruct(split)


def test_recency_split_never_takes_more_than_its_share_of_history(tmp_path: Path) -> None:
    repo = build_steady(tmp_path)
    split = recency_split(repo.root, min_added_lines=10_000, max_commit_share=0.1)
    assert split.detail["commits_after"] == 2
    assert split.detail["added_lines"] == 20
    assert not split.detail["reached_min_added_lines"]
    split = recency_split(repo.root, min_added_lines=10_000, max_commit_share=0.0)
    assert split.detail["commits_after"] == 1


def test_uncommitted_work_counts_as_newest(tmp_path: Path) -> None:
    repo = build_steady(tmp_path, count=3)
    repo.write({"lib/wip.rb": ruby(*(f"wip_{i} = draft({i})" for i in range(10)))})
    split = recency_split(repo.root, min_added_lines=15)
    assert split.detail["commits_after"] == 1  # HEAD's 10 lines + 10 untracked
    assert {c.source for c in split.cases} == {
        name(repo.root, "lib/wip.rb"),
        name(repo.root, "lib/f2.rb"),
    }


def test_split_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    repo = build_steady(tmp_path, count=6, lines=30)
    a = recency_split(repo.root, min_added_lines=50, cases=20, seed=5)
    b = recency_split(repo.root, min_added_lines=50, cases=20, seed=5)
    c = recency_split(repo.root, min_added_lines=50, cases=20, seed=6)
    assert a == b
    assert a.cases != c.cases
    assert a.train_files == c.train_files


# --- time split ------------------------------------------------------------------------------


def test_time_split_commit_counts_first_parent_commits(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "app")
    for i in range(4):
        repo.commit({"main.rb": ruby(*(f"MAIN_{j} = {j}" for j in range(i + 1)))})
    main_branch = repo.git("rev-parse", "--abbrev-ref", "HEAD")
    repo.git("checkout", "-q", "-b", "side")
    side = [repo.commit({f"side{i}.rb": ruby(f"SIDE_{i} = {i}")}) for i in range(3)]
    repo.git("checkout", "-q", main_branch)
    repo.git("merge", "-q", "--no-ff", "-m", "merge side", "side", day=20)
    merge = repo.git("rev-parse", "HEAD")
    first_parent = [*repo.commits[:4], merge]
    assert time_split_commit(repo.root, 0.0) == first_parent[0]
    assert time_split_commit(repo.root, 0.5) == first_parent[2]
    assert time_split_commit(repo.root) == first_parent[int(0.85 * 4)]
    assert time_split_commit(repo.root, 1.0) == merge
    assert not set(side) & {time_split_commit(repo.root, f / 10) for f in range(11)}
    split = git_split(repo.root, time_split_commit(repo.root, 0.5))
    assert {case_line(c) for c in split.cases} == {
        "MAIN_3 = 3",
        "SIDE_0 = 0",
        "SIDE_1 = 1",
        "SIDE_2 = 2",
    }
    with pytest.raises(ValueError):
        time_split_commit(repo.root, 1.5)


def test_time_split_commit_needs_history(tmp_path: Path, no_git_above: None) -> None:
    with pytest.raises(RubytailorError):
        time_split_commit(tmp_path)


# --- mtime fallback --------------------------------------------------------------------------


def test_mtime_split_evaluates_the_newest_files(tmp_path: Path, no_git_above: None) -> None:
    root = tmp_path / "app"
    sizes = {"a.rb": 30, "b.rb": 30, "c.rb": 30, "d.rb": 5, "e.rb": 5}  # lines of code
    for age, (rel, count) in enumerate(sizes.items()):
        path = root / "lib" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ruby(*(f"line_{rel[0]}_{i:02d} = compute({i})" for i in range(count))))
        stamp = 1_700_000_000 - 1000 * age  # a.rb newest
        os.utime(path, (stamp, stamp))
    split = recency_split(root, cases=50, seed=1, eval_share=0.15)
    assert split.method == "mtime"
    # a.rb alone is 30 % of the bytes: one file reaches the share.
    assert [n for n, _ in split.eval_files] == [name(root, "lib/a.rb")]
    assert [n for n, _ in split.train_files] == [name(root, f"lib/{c}.rb") for c in "bcde"]
    assert split.cases == line_cases(split.eval_files, 50, 1)
    assert len(split.cases) == 30
    check_cases_reconstruct(split)
    split = recency_split(root, eval_share=0.5)
    assert [n for n, _ in split.eval_files] == [name(root, "lib/a.rb"), name(root, "lib/b.rb")]
    split = recency_split(root, eval_share=1.0)
    assert len(split.eval_files) == 4 and len(split.train_files) == 1  # never all files
    assert split.detail["train_files"] == 1
    assert split.detail["eval_bytes"] + split.detail["train_bytes"] == sum(
        (root / "lib" / rel).stat().st_size for rel in sizes
    )


def test_no_git_one_file(tmp_path: Path, no_git_above: None) -> None:
    (tmp_path / "only.rb").write_text(ruby("class Only", "  def run = perform_work", "end"))
    split = recency_split(tmp_path, cases=10)
    assert split.method == "mtime"
    assert split.train_files == []
    assert [n for n, _ in split.eval_files] == [name(tmp_path, "only.rb")]
    assert {case_line(c) for c in split.cases} == {"class Only", "  def run = perform_work"}
    check_cases_reconstruct(split)


def test_no_ruby_files_gives_an_empty_split(tmp_path: Path, no_git_above: None) -> None:
    split = recency_split(tmp_path)
    assert (split.method, split.train_files, split.eval_files, split.cases) == ("mtime", [], [], [])


def test_single_commit_or_no_git_binary_falls_back_to_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path / "app")
    repo.commit({"a.rb": ruby("A_ONE = 1"), "b.rb": ruby("B_TWO = 2")})
    assert recency_split(repo.root).method == "mtime"
    repo.commit({"c.rb": ruby("C_THREE = 3")})
    assert recency_split(repo.root).method == "git"
    monkeypatch.setattr(holdout.shutil, "which", lambda _: None)
    assert recency_split(repo.root).method == "mtime"
