"""Dialogue-continuation tasks: readers (chitchat, ConvAI2), the task builder, tokenisation and collation.

A *sample* is ``(context, candidates, label)``: ``context`` is the dialogue before a reply (its last
``context_turns`` turns), ``candidates`` the ``C = 20`` possible continuations and ``label`` the index of the true one.
A *task* is one speaker (chitchat) or one persona (ConvAI2): its replies to the other speaker.

* Retraining tasks (``T``) and test tasks (``T'``) are disjoint speakers chosen by size, largest first: the ``T``
  largest retrain, the next ``T'`` are the (capped, low-resource) test tasks.
* Train and held-out samples of one task come from disjoint conversations; at most ``per_conversation`` samples are
  taken from one conversation, at most ``heldout_samples`` held-out and ``retrain_samples`` / ``test_train_samples``
  training samples per task (the caps of :class:`llm.config.Config`).
* Negatives: chitchat draws 19 distinct turns from *other* conversations with a generator seeded by
  ``(data_seed, crc32(task name))``; ConvAI2 uses the file's own candidates (topped up the same way if fewer than 19
  distinct ones remain). The 20 candidates are then shuffled with the same generator.
* Tokenisation goes through ``datasets.Dataset.map`` with a content-addressed cache file; a tokenised split is kept
  as one flat token tensor plus offsets, and :meth:`TokenisedSplit.collate` pads a batch with tensor operations only.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass

import numpy as np

from .config import N_CANDIDATES, CandidateError, Config, DataError, LLMError

__all__ = ["Turn", "Conversation", "Sample", "Task", "TaskSet", "read_chitchat", "read_convai2", "build_tasks",
           "load_tasks", "TokenisedSplit", "tokenise", "default_cache_dir"]


@dataclass(frozen=True)
class Turn:
    speaker: str | None  # None: a speaker that is never a task (ConvAI2's partner)
    text: str
    candidates: tuple[str, ...] | None = None  # ConvAI2: the file's 20 candidates for this reply


@dataclass(frozen=True)
class Conversation:
    id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Sample:
    context: str
    candidates: tuple[str, ...]  # (C,)
    label: int  # candidates[label] is the true continuation
    conversation: str


@dataclass(frozen=True)
class Task:
    name: str
    train: tuple[Sample, ...]
    heldout: tuple[Sample, ...]


@dataclass(frozen=True)
class TaskSet:
    retrain: tuple[Task, ...]  # T tasks
    test: tuple[Task, ...]  # T' tasks
    source: str

    def summary(self) -> dict:
        return {"source": self.source,
                "retrain": [{"task": t.name, "train": len(t.train), "heldout": len(t.heldout)} for t in self.retrain],
                "test": [{"task": t.name, "train": len(t.train), "heldout": len(t.heldout)} for t in self.test]}


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


def read_convai2(path: str) -> list[Conversation]:
    """Read a ConvAI2 / PersonaChat file in ParlAI text format; one conversation per episode.

    A line is ``N text``; ``N == 1`` starts an episode; ``N your persona: ...`` lines give the persona; a dialogue
    line is ``N partner<TAB>reply<TAB><TAB>cand_1|...|cand_20`` with the reply among the candidates. The speaker of
    the replies is the persona, the sorted tuple of its lines joined by ``" | "`` (no ``eval``); the partner's turns
    have speaker ``None``. Malformed lines raise :class:`DataError` naming the file and line.
    """
    try:
        fh = open(path, encoding="utf-8")
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
        for lineno, line in enumerate(fh, 1):
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
                cands = tuple(c.strip() for c in fields[3].split("|"))
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

    def draw(self, rng: np.random.Generator, k: int, conv_index: int, exclude: set[str], task: str) -> list[str]:
        """``k`` distinct texts from conversations other than ``conv_index``, none in ``exclude``."""
        out: list[str] = []
        seen = set(exclude)
        n = len(self.texts)
        for _ in range(20):
            for i in rng.integers(0, n, size=3 * k):
                if self.conv[i] != conv_index and self.texts[i] not in seen:
                    seen.add(self.texts[i])
                    out.append(self.texts[i])
                    if len(out) == k:
                        return out
        # Rejection sampling failed: the pool is small. Choose exactly among what is available, or refuse.
        avail = sorted({t for t, c in zip(self.texts, self.conv) if c != conv_index} - seen)
        if len(avail) < k - len(out):
            raise CandidateError(
                f"task {task!r}: only {len(out) + len(avail) + 1} distinct candidates available, "
                f"{N_CANDIDATES} are needed (1 true reply + {N_CANDIDATES - 1} from other conversations)")
        pick = rng.choice(len(avail), size=k - len(out), replace=False)
        return out + [avail[i] for i in sorted(pick)]


def _make_sample(rng, pool: _Pool, conversations, ci: int, ti: int, context_turns: int, task: str) -> Sample:
    conv = conversations[ci]
    true = conv.turns[ti].text
    context = " ".join(t.text for t in conv.turns[max(0, ti - context_turns):ti])
    negatives: list[str] = []
    if conv.turns[ti].candidates is not None:
        seen = {true}
        for c in conv.turns[ti].candidates:
            if c not in seen:
                seen.add(c)
                negatives.append(c)
        negatives = negatives[:N_CANDIDATES - 1]
    if len(negatives) < N_CANDIDATES - 1:
        negatives += pool.draw(rng, N_CANDIDATES - 1 - len(negatives), ci, {true, *negatives}, task)
    cands = [true] + negatives
    order = rng.permutation(N_CANDIDATES)
    shuffled = tuple(cands[j] for j in order)
    return Sample(context, shuffled, int(np.flatnonzero(order == 0)[0]), conv.id)


def build_tasks(conversations: list[Conversation], cfg: Config, source: str = "chitchat") -> TaskSet:
    """Split speakers into ``T`` retraining and ``T'`` test tasks by size and build their samples.

    The size of a speaker is the number of its replies (turns answering another speaker, with a non-empty
    context). Ties are broken by name, so the choice is deterministic.
    """
    replies: dict[str, list[tuple[int, int]]] = {}
    for ci, conv in enumerate(conversations):
        for ti in range(1, len(conv.turns)):
            s = conv.turns[ti].speaker
            if s is not None and conv.turns[ti - 1].speaker != s:
                replies.setdefault(s, []).append((ci, ti))
    need = cfg.n_retrain_tasks + cfg.n_test_tasks
    ranked = sorted(replies, key=lambda s: (-len(replies[s]), s))
    if len(ranked) < need:
        raise LLMError(f"{source}: {len(ranked)} speakers with replies, but n_retrain_tasks + n_test_tasks = {need}")
    pool = _Pool(conversations)

    def task(name: str, n_train: int) -> Task:
        rng = _task_rng(cfg.data_seed, name)
        by_conv: dict[int, list[int]] = {}
        for ci, ti in replies[name]:
            by_conv.setdefault(ci, []).append(ti)
        conv_ids = sorted(by_conv)
        order = rng.permutation(len(conv_ids))
        heldout, train = [], []
        for j in order:
            ci = conv_ids[j]
            target = heldout if len(heldout) < cfg.heldout_samples else train
            if target is train and len(train) >= n_train:
                break
            tis = by_conv[ci]
            if len(tis) > cfg.per_conversation:
                tis = sorted(rng.choice(tis, size=cfg.per_conversation, replace=False).tolist())
            room = (cfg.heldout_samples if target is heldout else n_train) - len(target)
            for ti in tis[:room]:
                target.append(_make_sample(rng, pool, conversations, ci, ti, cfg.context_turns, name))
        if not train or not heldout:
            raise LLMError(f"task {name!r} has {len(train)} training and {len(heldout)} held-out samples; "
                           f"both must be >= 1 (its replies lie in {len(conv_ids)} conversation(s))")
        return Task(name, tuple(train), tuple(heldout))

    retrain = tuple(task(s, cfg.retrain_samples) for s in ranked[:cfg.n_retrain_tasks])
    test = tuple(task(s, cfg.test_train_samples) for s in ranked[cfg.n_retrain_tasks:need])
    return TaskSet(retrain, test, source)


def load_tasks(cfg: Config) -> TaskSet:
    """The task set of ``cfg.data``: ``'chitchat'`` (the packaged dataset) or a ConvAI2 ParlAI text file."""
    if cfg.data == "chitchat":
        return build_tasks(read_chitchat(), cfg, "chitchat")
    if cfg.data.endswith(".json"):
        return build_tasks(read_chitchat(cfg.data), cfg, cfg.data)
    return build_tasks(read_convai2(cfg.data), cfg, cfg.data)


# ------------------------------------------------------------------------------------------ tokenisation, collation

def default_cache_dir() -> str:
    return os.environ.get("METALORA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "metalora", "llm"))


@dataclass
class TokenisedSplit:
    """Samples of one or more tasks, tokenised as (context, candidate) pairs.

    ``ids``/``types``: flat token tensors of all pairs, ``offsets`` (N C + 1,): pair ``p`` is
    ``ids[offsets[p]:offsets[p+1]]``; pairs ``i C .. i C + C - 1`` belong to sample ``i``. ``labels`` (N,),
    ``tasks`` (N,): the task index of each sample.
    """

    ids: "torch.Tensor"
    types: "torch.Tensor | None"
    offsets: "torch.Tensor"
    labels: "torch.Tensor"
    tasks: "torch.Tensor"
    n_candidates: int
    pad_id: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def collate(self, idx, negatives: int | None = None, generator=None) -> dict:
        """Pad the pairs of samples ``idx`` (B,) to one batch, with tensor operations only.

        ``negatives = k`` keeps the true pair and ``k`` random negatives of each sample (training); ``None`` keeps
        all ``C`` candidates (evaluation). Returns ``input_ids``/``attention_mask``/(``token_type_ids``) of shape
        (B K, L_max) with K = k + 1 or C, ``pair_labels`` (B K,) in {0, 1}, ``labels`` (B,) the index of the true pair
        among the K, and ``tasks`` (B,).
        """
        import torch

        idx = torch.as_tensor(idx, dtype=torch.long)
        b, c = idx.shape[0], self.n_candidates
        labels = self.labels[idx]
        if negatives is None:
            cols = torch.arange(c).expand(b, c)
            new_labels = labels
        else:
            score = torch.rand(b, c, generator=generator)
            score[torch.arange(b), labels] = -1.0  # the true pair sorts first
            cols = score.argsort(dim=1)[:, :negatives + 1]
            new_labels = torch.zeros(b, dtype=torch.long)
        k = cols.shape[1]
        pairs = (idx[:, None] * c + cols).reshape(-1)
        start = self.offsets[pairs]
        length = self.offsets[pairs + 1] - start
        pos = torch.arange(int(length.max()))
        mask = pos[None, :] < length[:, None]
        gather = (start[:, None] + pos[None, :]).clamp(max=self.ids.shape[0] - 1)
        out = {"input_ids": torch.where(mask, self.ids[gather], self.pad_id), "attention_mask": mask.long()}
        if self.types is not None:
            out["token_type_ids"] = torch.where(mask, self.types[gather], 0)
        pair_labels = torch.zeros(b, k, dtype=torch.long)
        pair_labels[torch.arange(b), new_labels] = 1
        out.update(pair_labels=pair_labels.reshape(-1), labels=new_labels, tasks=self.tasks[idx])
        return out


def tokenise(tasks: list[Task] | tuple[Task, ...], tokenizer, max_length: int, *, split: str = "train",
             cache_dir: str | None = None) -> TokenisedSplit:
    """Tokenise the ``split`` (``'train'`` or ``'heldout'``) samples of ``tasks`` (task index = position in ``tasks``).

    Pairs are tokenised by ``datasets.Dataset.map`` (batched, fast tokenizer) with the context truncated from the left
    to ``max_length`` tokens per pair; the result is cached under ``cache_dir`` in a file named by a hash of the
    tokenizer, ``max_length`` and every text, so a re-run reads it back instead of tokenising again.
    """
    import datasets
    import torch

    samples = [(ti, s) for ti, t in enumerate(tasks) for s in getattr(t, split)]
    if not samples:
        raise LLMError(f"no {split} samples to tokenise")
    contexts = [s.context for _, s in samples for _ in s.candidates]
    cands = [c for _, s in samples for c in s.candidates]
    c = len(samples[0][1].candidates)
    h = hashlib.sha256()
    h.update(f"{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}|{type(tokenizer).__name__}".encode())
    for a, b in zip(contexts, cands):
        h.update(a.encode("utf-8") + b"\x00" + b.encode("utf-8") + b"\x01")
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    cache_file = os.path.join(cache_dir, f"tok-{h.hexdigest()[:24]}.arrow")

    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # keep the end of the context, nearest the reply
    try:
        def encode(batch):
            enc = tokenizer(batch["context"], batch["candidate"], truncation="longest_first", max_length=max_length)
            out = {"input_ids": enc["input_ids"]}
            if "token_type_ids" in enc:
                out["token_type_ids"] = enc["token_type_ids"]
            return out

        ds = datasets.Dataset.from_dict({"context": contexts, "candidate": cands})
        was = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            ds = ds.map(encode, batched=True, batch_size=2000, remove_columns=["context", "candidate"],
                        cache_file_name=cache_file, load_from_cache_file=True, new_fingerprint=h.hexdigest()[:32])
        finally:
            if was:
                datasets.enable_progress_bars()
    finally:
        tokenizer.truncation_side = side
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    col = table.column("input_ids").combine_chunks()
    ids = torch.from_numpy(col.values.to_numpy(zero_copy_only=False).astype(np.int64))
    offsets = torch.from_numpy(col.offsets.to_numpy().astype(np.int64))
    types = None
    if "token_type_ids" in table.column_names:
        tcol = table.column("token_type_ids").combine_chunks()
        types = torch.from_numpy(tcol.values.to_numpy(zero_copy_only=False).astype(np.int64))
    labels = torch.tensor([s.label for _, s in samples], dtype=torch.long)
    task_ids = torch.tensor([ti for ti, _ in samples], dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenisedSplit(ids, types, offsets, labels, task_ids, c, int(pad))
