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

The readers and the types are here; the task builder is :mod:`llm.tasks`; tokenisation is :mod:`llm.tokens`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .config import Config, DataError, LLMError

__all__ = ["Turn", "Conversation", "Sample", "Task", "TaskSet", "read_chitchat", "read_convai2", "load_tasks",
           "SPLITS"]

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
    tasks) and ``validation`` (epoch selection), from disjoint conversations.

    Attributes
    ----------
    name : str
        The speaker's id (chitchat) or the persona (ConvAI2).
    train, heldout, validation : tuple of Sample
        ``(n_train,)``, ``(n_heldout,)`` and ``(n_validation,)`` samples.

    >>> t = Task("alice", train=(Sample("hi", ("hello", "bye"), 0, "c1"),), heldout=())
    >>> len(t.split("train")), t.split("validation")
    (1, ())
    """

    name: str
    train: tuple[Sample, ...]
    heldout: tuple[Sample, ...]
    validation: tuple[Sample, ...] = ()

    def split(self, which: str) -> tuple[Sample, ...]:
        """The samples of split ``which`` (one of :data:`SPLITS`).

        Returns
        -------
        tuple of Sample
            The split's samples in their order (possibly empty).

        Raises
        ------
        LLMError
            For a name not in :data:`SPLITS`.
        """
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
        """Names and split sizes of every task.

        Returns
        -------
        dict
            ``{"source": str, "retrain": [...], "test": [...]}``, each list holding one
            ``{"task": name, "train": n, "validation": n, "heldout": n}`` per task (sample counts), in task order.

        >>> s = Sample("hi", ("hello", "bye"), 0, "c1")
        >>> TaskSet((Task("a", (s, s), ()),), (Task("b", (s,), (s,)),), "chitchat").summary()["test"]
        [{'task': 'b', 'train': 1, 'validation': 0, 'heldout': 1}]
        """
        def sizes(t: Task) -> dict:
            return {"task": t.name, **{s: len(t.split(s)) for s in SPLITS}}

        return {"source": self.source, "retrain": [sizes(t) for t in self.retrain],
                "test": [sizes(t) for t in self.test]}


# ----------------------------------------------------------------------------------------------------------- readers

def read_chitchat(path: str | None = None) -> list[Conversation]:
    """Read the chitchat-dataset JSON (default: the installed package's ``dataset.json``).

    Each message (consecutive utterances of one sender) becomes one turn, its utterances joined by a space;
    consecutive messages of the same sender are merged.

    Returns
    -------
    list of Conversation
        One per conversation of the file, in file order; a turn's ``speaker`` is the sender's id.

    Raises
    ------
    DataError
        When the file is unreadable, not JSON, or a conversation is malformed (the message names the file, and
        the line where JSON parsing stopped).
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
    """The lines of the binary file ``fh`` as text; a non-UTF-8 byte raises :class:`DataError` naming its line."""
    for lineno, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason}); a ConvAI2 file is UTF-8 "
                            "ParlAI text") from None


def read_convai2(path: str) -> list[Conversation]:
    """Read a ConvAI2 / PersonaChat file in ParlAI text format, one conversation per episode.

    A line is ``N text``, ``N == 1`` starting an episode; ``N your persona: ...`` lines give the persona; a dialogue
    line is ``N partner<TAB>reply<TAB><TAB>cand_1|...|cand_20``, the reply among the candidates (blank and repeated
    candidates dropped, :func:`_candidates`). The replies' speaker is the persona: its sorted lines joined by
    ``" | "`` (no ``eval``); the partner's turns have speaker ``None`` and no candidates.

    Returns
    -------
    list of Conversation
        One per episode, in file order, with id ``"<file name>:<first line>"``; partner and reply turns alternate.

    Raises
    ------
    DataError
        An unreadable or non-UTF-8 file, a malformed line, turn number or reply, or no episode (names file, line).
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


def load_tasks(cfg: Config) -> TaskSet:
    """The task set of ``cfg.data``: ``'chitchat'`` (the packaged dataset), a chitchat-format ``.json`` file or a
    ConvAI2 ParlAI text file, built by :func:`llm.tasks.build_tasks`.

    Returns
    -------
    TaskSet
        ``cfg.n_retrain_tasks`` retraining and ``cfg.n_test_tasks`` test tasks, with the sizes of ``cfg``.

    Raises
    ------
    DataError
        When the file is unreadable or malformed (the message names the file and the line).
    CandidateError
        When fewer than 20 distinct candidates can be found for a sample.
    LLMError
        When there are too few speakers or a split of a task would be empty.
    """
    from .tasks import build_tasks  # the builder imports this module's types

    if cfg.data == "chitchat":
        return build_tasks(read_chitchat(), cfg, "chitchat")
    if cfg.data.endswith(".json"):
        return build_tasks(read_chitchat(cfg.data), cfg, cfg.data)
    return build_tasks(read_convai2(cfg.data), cfg, cfg.data)
