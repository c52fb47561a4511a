"""Dialogue-continuation tasks: readers (chitchat, ConvAI2) and the task builder.

A *sample* is ``(context, candidates, label)``: ``context`` is the dialogue before a reply (its last
``context_turns`` turns), ``candidates`` the ``C = 20`` possible continuations and ``label`` the index of the true one.
A *task* is one speaker (chitchat) or one persona (ConvAI2): its replies to the other speaker.

* Retraining tasks (``T``) and test tasks (``T'``) are disjoint speakers chosen by size, largest first: the ``T``
  largest retrain, the next ``T'`` are the (capped, low-resource) test tasks.
* Each task has three splits from disjoint conversations: ``heldout`` (the scored items; test tasks only),
  ``validation`` (epoch selection, never scored) and ``train``. At most ``per_conversation`` samples come from one
  conversation; the caps are those of :class:`llm.config.Config`.
* Negatives: chitchat draws 19 distinct turns of *other* conversations with a generator seeded by
  ``(data_seed, crc32(task name))``; with ``negative_pool = P > 0`` they come from a pool of ``P`` turns of
  conversations the task's speaker is not in, drawn once per task and split (items of a split share their
  negatives' texts, which makes evaluating a bi-encoder cheap; the three splits' pools are disjoint, so training
  never sees the negatives of the items it is judged on). ConvAI2 uses the file's own candidates (topped up the same
  way if fewer than 19 distinct ones remain). The 20 candidates are then shuffled with the same generator.

Tokenisation lives in :mod:`llm.tokens`.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass

import numpy as np

from .config import N_CANDIDATES, CandidateError, Config, DataError, LLMError

__all__ = ["Turn", "Conversation", "Sample", "Task", "TaskSet", "read_chitchat", "read_convai2", "build_tasks",
           "load_tasks", "SPLITS"]

SPLITS = ("train", "validation", "heldout")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation.

    Attributes
    ----------
    speaker : str or None
        Its speaker's id (a task of chitchat is one speaker); ``None`` for a speaker that is never a task
        (ConvAI2's partner).
    text : str
        The message (chitchat: consecutive utterances of one sender joined by a space).
    candidates : tuple of str or None
        ConvAI2 only: the file's 20 candidates for this reply, the true one among them; ``None`` otherwise.

    >>> Turn("alice", "hi there").candidates is None
    True
    """

    speaker: str | None  # None: a speaker that is never a task (ConvAI2's partner)
    text: str
    candidates: tuple[str, ...] | None = None  # ConvAI2: the file's candidates for this reply


@dataclass(frozen=True)
class Conversation:
    """A dialogue: its id (chitchat's key, or ConvAI2's persona and episode) and its turns in order.

    Attributes
    ----------
    id : str
        Unique within one data file; samples record it so that splits never share a conversation.
    turns : tuple of Turn
        ``(n_turns,)`` in the order spoken.
    """

    id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Sample:
    """One item of dialogue continuation: a context and ``C = 20`` candidate replies, one of them true.

    Attributes
    ----------
    context : str
        The preceding turns (at most ``Config.context_turns``), joined by spaces.
    candidates : tuple of str
        ``(C,)`` distinct candidate replies.
    label : int
        Index in ``[0, C)`` of the true continuation: ``candidates[label]``.
    conversation : str
        Id of the :class:`Conversation` the sample comes from.

    >>> s = Sample("how are you?", ("fine", "blue"), 0, "c1")
    >>> s.candidates[s.label]
    'fine'
    """

    context: str
    candidates: tuple[str, ...]  # (C,)
    label: int  # candidates[label] is the true continuation
    conversation: str


@dataclass(frozen=True)
class Task:
    """One speaker's samples: ``train`` (retraining or fine-tuning), ``heldout`` (scored; empty for retraining
    tasks) and ``validation`` (epoch selection), from disjoint conversations."""

    name: str
    train: tuple[Sample, ...]
    heldout: tuple[Sample, ...]
    validation: tuple[Sample, ...] = ()

    def split(self, which: str) -> tuple[Sample, ...]:
        """The samples of split ``which`` (one of :data:`SPLITS`)."""
        if which not in SPLITS:
            raise LLMError(f"split must be one of {SPLITS}, got {which!r}")
        return getattr(self, which)


@dataclass(frozen=True)
class TaskSet:
    """The tasks of one experiment: ``T`` retraining tasks and ``T'`` test tasks (distinct speakers / personas).

    Attributes
    ----------
    retrain : tuple of Task
        ``(T,)`` tasks retrained on (SR pooled, Meta-LoRA one adapter each); their ``heldout`` is empty.
    test : tuple of Task
        ``(T',)`` unseen tasks, fine-tuned and scored.
    source : str
        Where the data came from (``'chitchat'`` or the ConvAI2 file's path).
    """

    retrain: tuple[Task, ...]  # T tasks
    test: tuple[Task, ...]  # T' tasks
    source: str

    def summary(self) -> dict:
        """Names and split sizes: ``{"source", "retrain": [{"task", "train", "heldout", "validation"}], "test": [...]}``
        (sample counts per split)."""
        def sizes(t: Task) -> dict:
            return {"task": t.name, **{s: len(t.split(s)) for s in SPLITS}}

        return {"source": self.source, "retrain": [sizes(t) for t in self.retrain],
                "test": [sizes(t) for t in self.test]}


# ----------------------------------------------------------------------------------------------------------- readers

def read_chitchat(path: str | None = None) -> list[Conversation]:
    """Read the chitchat-dataset JSON (default: the installed package's ``dataset.json``).

    Each message (consecutive utterances of one sender) becomes one turn, its utterances joined by a space;
    consecutive messages of the same sender are merged.
    """
    if path is None:
        import chitchat_dataset

        path = chitchat_dataset._PATH
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except OSError as exc:
        raise DataError(f"cannot read chitchat file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", "?")
        raise DataError(f"{path}:{line}: not valid chitchat JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}:1: chitchat JSON must be an object of conversations, got {type(raw).__name__}")
    out = []
    for cid, conv in raw.items():
        turns: list[Turn] = []
        try:
            for message in conv["messages"]:
                sender = message[0]["sender"]
                text = " ".join(u["text"].strip() for u in message if u["text"].strip())
                if not text:
                    continue
                if turns and turns[-1].speaker == sender:
                    turns[-1] = Turn(sender, turns[-1].text + " " + text)
                else:
                    turns.append(Turn(sender, text))
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: conversation {cid!r} is malformed (missing or wrong field: {exc!r})") from None
        out.append(Conversation(str(cid), tuple(turns)))
    return out


def _candidates(field: str) -> tuple[str, ...]:
    """The distinct non-blank candidates of a ``cand_1|...|cand_n`` field, in file order.

    Real files contain ``||`` and ``| |`` (blank candidates) and repeated candidates; a sample must never hold an
    empty or a duplicate candidate, so both are dropped here and the task builder tops the sample up to 20 with
    turns of other conversations.
    """
    out: dict[str, None] = {}
    for c in field.split("|"):
        c = c.strip()
        if c:
            out.setdefault(c)
    return tuple(out)


def _utf8_lines(fh, path: str):
    """The lines of the binary file ``fh`` as text; a byte that is not UTF-8 raises :class:`DataError` naming the file and line."""
    for lineno, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason}); a ConvAI2 file is UTF-8 "
                            "ParlAI text") from None


def read_convai2(path: str) -> list[Conversation]:
    """Read a ConvAI2 / PersonaChat file in ParlAI text format; one conversation per episode.

    A line is ``N text``; ``N == 1`` starts an episode; ``N your persona: ...`` lines give the persona; a dialogue
    line is ``N partner<TAB>reply<TAB><TAB>cand_1|...|cand_20`` with the reply among the candidates (blank and
    repeated candidates are dropped, see :func:`_candidates`). The speaker of
    the replies is the persona, the sorted tuple of its lines joined by ``" | "`` (no ``eval``); the partner's turns
    have speaker ``None``. Malformed lines raise :class:`DataError` naming the file and line.
    """
    try:
        fh = open(path, "rb")  # decoded line by line (_utf8_lines), so that a bad byte is named by its line
    except OSError as exc:
        raise DataError(f"cannot read ConvAI2 file {path}: {exc.strerror or exc}") from None
    episodes: list[Conversation] = []
    persona: list[str] = []
    turns: list[Turn] = []
    start = 0
    expect = 1

    def close():
        if turns:
            speaker = " | ".join(sorted(persona)) if persona else "(no persona)"
            fixed = tuple(Turn(speaker if t.speaker == "self" else None, t.text, t.candidates) for t in turns)
            episodes.append(Conversation(f"{os.path.basename(path)}:{start}", fixed))

    with fh:
        for lineno, line in enumerate(_utf8_lines(fh, path), 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            num, sep, text = line.partition(" ")
            if not sep or not num.isdigit():
                raise DataError(f"{path}:{lineno}: a line must start with a turn number and a space, got {line[:40]!r}")
            n = int(num)
            if n == 1:
                close()
                persona, turns, start, expect = [], [], lineno, 1
            elif n != expect:
                raise DataError(f"{path}:{lineno}: turn number {n} where {expect} was expected")
            expect = n + 1
            if text.startswith("your persona:"):
                if turns:
                    raise DataError(f"{path}:{lineno}: persona line after the dialogue started")
                persona.append(text[len("your persona:"):].strip())
                continue
            if text.startswith("partner's persona:"):
                continue
            fields = text.split("\t")
            if len(fields) < 2 or not fields[1].strip():
                raise DataError(f"{path}:{lineno}: a dialogue line needs 'partner<TAB>reply', "
                                f"got {len(fields)} field(s)")
            partner, reply = fields[0].strip(), fields[1].strip()
            cands = None
            if len(fields) >= 4 and fields[3].strip():
                cands = _candidates(fields[3])
                if reply not in cands:
                    raise DataError(f"{path}:{lineno}: the true reply is not among the {len(cands)} candidates")
            elif len(fields) >= 4 or len(fields) == 3:
                raise DataError(f"{path}:{lineno}: empty candidate list")
            turns.append(Turn(None, partner))
            turns.append(Turn("self", reply, cands))
    close()
    if not episodes:
        raise DataError(f"{path}:1: no dialogue episode found")
    return episodes




# ------------------------------------------------------------------------------------------------------ task builder

def _task_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


class _Pool:
    """All turns of all conversations, for drawing negatives from other conversations."""

    def __init__(self, conversations: list[Conversation]):
        texts, conv = [], []
        for i, c in enumerate(conversations):
            for t in c.turns:
                texts.append(t.text)
                conv.append(i)
        self.texts = texts
        self.conv = np.asarray(conv, dtype=np.int64)

    def draw(self, rng: np.random.Generator, k: int, convs: set[int], exclude: set[str], task: str) -> list[str]:
        """``k`` distinct texts of conversations not in ``convs``, none in ``exclude``.

        Raises :class:`CandidateError` when fewer than ``k`` such texts exist.
        """
        out: list[str] = []
        seen = set(exclude)
        n = len(self.texts)
        for _ in range(20):
            for i in rng.integers(0, n, size=3 * k):
                if int(self.conv[i]) not in convs and self.texts[i] not in seen:
                    seen.add(self.texts[i])
                    out.append(self.texts[i])
                    if len(out) == k:
                        return out
        # Rejection sampling failed: the pool is small. Choose exactly among what is available, or refuse.
        avail = sorted({t for t, c in zip(self.texts, self.conv) if int(c) not in convs} - seen)
        if len(avail) < k - len(out):
            raise CandidateError(
                f"task {task!r}: only {len(out) + len(avail) + 1} distinct candidates available, "
                f"{N_CANDIDATES} are needed (1 true reply + {N_CANDIDATES - 1} from other conversations)")
        pick = rng.choice(len(avail), size=k - len(out), replace=False)
        return out + [avail[i] for i in sorted(pick)]


def _make_sample(rng, pool: _Pool, task_pool: list[str] | None, conversations, ci: int, ti: int,
                 context_turns: int, task: str) -> Sample:
    conv = conversations[ci]
    true = conv.turns[ti].text
    context = " ".join(t.text for t in conv.turns[max(0, ti - context_turns):ti])
    negatives: list[str] = []
    if conv.turns[ti].candidates is not None:
        negatives = [c for c in conv.turns[ti].candidates if c != true][:N_CANDIDATES - 1]
    elif task_pool is not None:
        choices = [t for t in task_pool if t != true]
        negatives = [choices[i] for i in rng.choice(len(choices), size=N_CANDIDATES - 1, replace=False)]
    if len(negatives) < N_CANDIDATES - 1:
        negatives += pool.draw(rng, N_CANDIDATES - 1 - len(negatives), {ci}, {true, *negatives}, task)
    cands = [true] + negatives
    order = rng.permutation(N_CANDIDATES)
    shuffled = tuple(cands[j] for j in order)
    return Sample(context, shuffled, int(np.flatnonzero(order == 0)[0]), conv.id)


def _replies(conversations: list[Conversation]) -> dict[str, list[tuple[int, int]]]:
    """Speaker -> (conversation index, turn index) of each of its replies (a turn answering another speaker)."""
    replies: dict[str, list[tuple[int, int]]] = {}
    for ci, conv in enumerate(conversations):
        for ti in range(1, len(conv.turns)):
            s = conv.turns[ti].speaker
            if s is not None and conv.turns[ti - 1].speaker != s:
                replies.setdefault(s, []).append((ci, ti))
    return replies


def _build_task(name: str, replies: list[tuple[int, int]], conversations, pool: _Pool, cfg: Config,
                caps: dict[str, int]) -> Task:
    """Samples of one speaker: conversations in a seeded order fill ``heldout``, then ``validation``, then
    ``train`` (each conversation goes to one split), at most ``cfg.per_conversation`` samples each."""
    rng = _task_rng(cfg.data_seed, name)
    by_conv: dict[int, list[int]] = {}
    for ci, ti in replies:
        by_conv.setdefault(ci, []).append(ti)
    conv_ids = sorted(by_conv)
    pools: dict[str, list[str] | None] = {s: None for s in ("heldout", "validation", "train")}
    if cfg.negative_pool > 0 and conversations[conv_ids[0]].turns[by_conv[conv_ids[0]][0]].candidates is None:
        # One pool per split, disjoint: training must never see the negatives of the items it is judged on (it
        # could learn to reject those texts instead of learning the task).
        drawn = pool.draw(rng, 3 * cfg.negative_pool, set(conv_ids), set(), name)
        for i, s in enumerate(pools):
            pools[s] = drawn[i * cfg.negative_pool:(i + 1) * cfg.negative_pool]
    out: dict[str, list[Sample]] = {s: [] for s in ("heldout", "validation", "train")}
    for j in rng.permutation(len(conv_ids)):
        target = next((s for s in out if len(out[s]) < caps[s]), None)
        if target is None:
            break
        ci = conv_ids[j]
        tis = by_conv[ci]
        if len(tis) > cfg.per_conversation:
            tis = sorted(rng.choice(tis, size=cfg.per_conversation, replace=False).tolist())
        for ti in tis[:caps[target] - len(out[target])]:
            out[target].append(_make_sample(rng, pool, pools[target], conversations, ci, ti, cfg.context_turns,
                                            name))
    short = [s for s in out if caps[s] > 0 and not out[s]]
    if short:
        raise LLMError(f"task {name!r} has no {' and no '.join(short)} samples (its replies lie in "
                       f"{len(conv_ids)} conversation(s); each split needs conversations of its own)")
    return Task(name, tuple(out["train"]), tuple(out["heldout"]), tuple(out["validation"]))


def build_tasks(conversations: list[Conversation], cfg: Config, source: str = "chitchat") -> TaskSet:
    """Split speakers into ``T`` retraining and ``T'`` test tasks by size and build their samples.

    The size of a speaker is the number of its replies (turns answering another speaker, with a non-empty
    context). Ties are broken by name, so the choice is deterministic. Retraining tasks get ``train`` and
    ``validation`` splits, test tasks ``train``, ``validation`` and ``heldout``.

    Raises :class:`LLMError` when there are too few speakers or a split of a task would be empty, and
    :class:`CandidateError` when fewer than 20 distinct candidates can be found.
    """
    replies = _replies(conversations)
    need = cfg.n_retrain_tasks + cfg.n_test_tasks
    ranked = sorted(replies, key=lambda s: (-len(replies[s]), s))
    if len(ranked) < need:
        raise LLMError(f"{source}: {len(ranked)} speakers with replies, but n_retrain_tasks + n_test_tasks = {need}")
    pool = _Pool(conversations)
    retrain_caps = {"heldout": 0, "validation": cfg.validation_samples, "train": cfg.retrain_samples}
    test_caps = {"heldout": cfg.heldout_samples, "validation": cfg.validation_samples,
                 "train": cfg.test_train_samples}
    retrain = tuple(_build_task(s, replies[s], conversations, pool, cfg, retrain_caps)
                    for s in ranked[:cfg.n_retrain_tasks])
    test = tuple(_build_task(s, replies[s], conversations, pool, cfg, test_caps)
                 for s in ranked[cfg.n_retrain_tasks:need])
    return TaskSet(retrain, test, source)


def load_tasks(cfg: Config) -> TaskSet:
    """The task set of ``cfg.data``: ``'chitchat'`` (the packaged dataset), a chitchat-format ``.json`` file or a
    ConvAI2 ParlAI text file."""
    if cfg.data == "chitchat":
        return build_tasks(read_chitchat(), cfg, "chitchat")
    if cfg.data.endswith(".json"):
        return build_tasks(read_chitchat(cfg.data), cfg, cfg.data)
    return build_tasks(read_convai2(cfg.data), cfg, cfg.data)
