"""``LanguageModel``: what every training objective shares.

Objectives differ only in :meth:`LanguageModel.loss` (masking, causality and the loss itself). Everything
else lives here once: the training/validation step, logging, optimizer parameter groups, the per-step
learning-rate schedule and checkpoint bookkeeping::

    batch {"input_ids", "labels"} ─▶ loss(batch) = (mean loss, target tokens) ─▶ log ─▶ backward (Lightning)
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torchmetrics import MeanMetric

from zoo.compat import attached_trainer
from zoo.nn.transformer import Transformer
from zoo.objectives.description import ModelDescription, Scoring
from zoo.optim.fused import prefer_fused
from zoo.optim.muon import optimizer_groups
from zoo.optim.schedules import Constant, Schedule
from zoo.training.checkpoints import (
    CheckpointMismatchError,
    check_state_dict_fits,
    read_checkpoint,
    trust_checkpoints,
)
from zoo.training.compile import CompileSetting, compile_for_training, resolve_compile


def _plain(value) -> bool:
    """Whether ``value`` is what weights-only loading accepts without tensors: numbers, strings, plain containers."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_plain, value))
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


@runtime_checkable
class TokenData(Protocol):
    """What an objective reads from the data module it trains on (:class:`zoo.data.TextDataModule` answers it):
    the tokenizer's vocabulary size, the tokens per row and the rows per batch on each device."""

    vocab_size: int
    seq_len: int
    batch_size: int


class LanguageModel(L.LightningModule):
    """Base objective around a :class:`zoo.nn.Transformer` backbone.

    Args:
        backbone: the network (blocks, norm, positions), built from YAML by ``class_path``.
        optimizer: optimizer factory called with the parameter groups, e.g. ``torch.optim.AdamW`` with its
            ``lr``, ``betas``, ``weight_decay``; weight decay applies to matrices only (see
            :func:`zoo.optim.weight_decay_groups`); Adam/AdamW without ``fused``/``foreach`` use the fused kernel
            where the device has it. ``zoo.optim.MuonWithAdamW``: Muon on the blocks' matrices, AdamW on the rest.
        schedule: per-step learning-rate schedule (``None`` = constant); needs ``trainer.max_steps``.
        compile: compile the backbone's training calls with ``torch.compile`` (in place, so checkpoints keep their
            parameter names; validation and sampling run eager); the first step is slower while it compiles.
            ``true`` or ``blocks``: each block on its own (blocks of one class share one graph: the shortest
            compile); ``model``: the whole backbone as one graph (longer to compile, sometimes a faster step);
            ``auto``: only where it pays back its compile time early in the run, in the scope that repays it
            soonest (see :func:`zoo.training.compile.resolve_compile`). Where the device cannot compile, training
            runs eager with one warning saying why.
        init_from: a checkpoint of ``python -m zoo fit`` (a file, a run's ``runs/<name>/last.ckpt`` link, or a run
            folder, whose newest checkpoint is taken) whose backbone weights are copied exactly when training
            (or validation) first starts: fine-tuning (SFT) and curriculum stages start from the previous run's
            weights with a fresh optimizer and schedule. Only the backbone's state dict is read; any mismatch of
            names or shapes is refused with the differing parameters listed. Resuming restores the run's own
            checkpoint over it; a model loaded from its own checkpoint never reads this path again.
    """

    def __init__(
        self,
        *,
        backbone: Transformer,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        schedule: Schedule | None = None,
        compile: CompileSetting = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # built in Python (not by the CLI), the backbone is in the state dict
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("backbone"), torch.nn.Module):
            # built in Python: objects (the backbone, factories, schedules, a subclass's conversion schedule) are not
            # kept, since checkpoints hold plain data only and load weights-only; pass them to load_from_checkpoint
            self.remove_ignored_hparams([k for k, v in self.hparams.items() if not _plain(v)])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.schedule = schedule if schedule is not None else Constant()
        self.val_loss = MeanMetric()
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=True)
        self.register_buffer("skipped_rows", torch.zeros((), dtype=torch.long), persistent=True)
        self.flops_per_batch: float | None = None  # read by zoo.training.TokenThroughput for MFU
        self.compile_backbone = compile
        self.init_from = init_from

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Counters added after a checkpoint was written start from zero instead of failing the load.
        state = checkpoint.get("state_dict", {})
        for name in ("tokens_seen", "skipped_rows"):
            state.setdefault(name, torch.zeros((), dtype=torch.long))
        if not self._sharded():  # a differing architecture or vocabulary is named here, not in torch's shape errors
            source = getattr(attached_trainer(self), "ckpt_path", None)
            source = f"checkpoint {source or ''}".strip()
            check_state_dict_fits(self.state_dict(), state, source=source, strict=self.strict_loading)
        self.init_from = None  # the checkpoint holds the weights; the run it started from is not needed

    @classmethod
    def from_checkpoint(cls, path: str, *, trust: bool | None = None, **kwargs) -> LanguageModel:
        """Load a checkpoint written by ``python -m zoo fit`` as the objective class it was trained with
        (``LanguageModel.from_checkpoint`` returns a ``CausalLM`` for a causal-LM run). The file is read
        weights-only: a file holding pickled Python objects is refused (``UntrustedCheckpointError``), and so is one
        naming a class that is not zoo's or torch's (``ForeignClassPathError``, before anything is imported), unless
        ``trust`` (``None`` = ``$ZOO_TRUST_CHECKPOINTS``). ``kwargs`` go to Lightning's ``load_from_checkpoint``
        (e.g. ``map_location``)."""
        # missing, truncated, foreign, untrusted, or naming a class outside zoo and torch: named, nothing imported
        checkpoint = read_checkpoint(path, mmap=True, trust=trust)
        class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
        if class_path is None:
            raise ValueError(
                f"checkpoint {path} has no recorded objective class (it was not written by `python -m zoo fit`): "
                "build the objective in Python and use load_from_checkpoint(path, backbone=...)"
            )
        module_name, _, name = class_path.rpartition(".")
        target = getattr(importlib.import_module(module_name), name)
        if not (isinstance(target, type) and issubclass(target, cls)):
            raise ValueError(f"checkpoint {path} holds a {class_path}, which is not a {cls.__name__}")
        kwargs["weights_only"] = not trust_checkpoints(trust)  # Lightning's own read of the file, weights-only too
        try:
            return target.load_from_checkpoint(path, **kwargs)
        except CheckpointMismatchError as err:
            raise CheckpointMismatchError(str(err).replace("checkpoint ", f"checkpoint {path} ", 1)) from None

    def _sharded(self) -> bool:
        """Whether a sharding strategy (FSDP, model parallel, DeepSpeed) holds this model's parameters as shards,
        whose shapes are not the checkpoint's."""
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        trainer = attached_trainer(self)
        strategy = trainer.strategy if trainer is not None else None
        return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy))

    # ---- what subclasses define ----------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Return (mean loss over target tokens, number of target tokens)."""
        raise NotImplementedError

    # Each objective describes itself once (`description`): its kind, sampler family, scorer and the facts its
    # sampler needs. Generation, evaluation, the exporters and the card ask the description and never which
    # objective they hold, so a new objective plugs into `zoo generate`, `zoo eval` and the eval callback by
    # giving one.
    @property
    def description(self) -> ModelDescription:
        """What kind of model this is (:class:`zoo.objectives.description.ModelDescription`)."""
        raise NotImplementedError(f"{type(self).__name__} gives no description: define its `description` property")

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        temperature: float = 0.0,
        eos_id: int | None = None,
        stop: Sequence[str] = (),
        tokenizer=None,
        generator: torch.Generator | None = None,
        on_token=None,
        options=None,
        **values,
    ):
        """Continue each prompt (token ids) with the description's sampler family; returns a
        :class:`zoo.generation.Generation`. ``options``: an instance of the family's options class, or the options by
        name in ``values`` (``max_new_tokens`` stands for the family's answer length)."""
        description = self.description
        family = description.sampler
        if options is None:
            options = family.make_options(**values)
        elif values:
            raise ValueError(f"give the sampling options as options= or by name, not both: {sorted(values)}")
        return family.sample(self.backbone, prompts, options, description=description, temperature=temperature,
                             eos_id=eos_id, stop=stop, tokenizer=tokenizer, generator=generator,
                             on_token=on_token)  # fmt: skip

    def sampling_context(self):
        """A context manager entered around many :meth:`sample` calls (e.g. a weight layout for decoding)."""
        return self.description.sampling_context(self.backbone)

    def scorer(self, *, tokenizer, eos: str, batch_size: int = 32, mc_num: int = 128, seed: int = 0):
        """The :class:`zoo.eval.Scorer` of the description's scoring: exact log-likelihoods
        (:class:`zoo.eval.CausalScorer`) or Monte-Carlo ELBO bounds (:class:`zoo.eval.ElboScorer`, ``mc_num`` samples,
        seeded)."""
        from zoo.eval.scoring import CausalScorer, ElboScorer

        description = self.description
        common = {"tokenizer": tokenizer, "prefix_id": tokenizer.token_to_id(eos),
                  "max_length": self.backbone.max_seq_len, "batch_size": batch_size}  # fmt: skip
        if description.scoring is Scoring.ELBO:
            return ElboScorer(model=self.backbone, mask_id=description.mask_id, shift=description.shift,
                              mc_num=mc_num, seed=seed, **common)  # fmt: skip
        return CausalScorer(backbone=self.backbone, **common)

    def load_backbone(self, path: str, *, grow_vocab: bool = False) -> None:
        """Copy the backbone weights of checkpoint ``path`` exactly; a mismatched architecture is refused with
        the differing parameters named. ``grow_vocab``: the one allowed difference is a larger vocabulary (e.g.
        room for a dedicated mask token), whose extra embedding and head rows start at the mean of the trained
        rows."""
        from zoo.training.resume import run_checkpoint

        path = str(run_checkpoint(path))  # a file, a run's last.ckpt link, or a run folder (its newest checkpoint)
        checkpoint = read_checkpoint(path)  # a truncated, foreign or untrusted file is named (weights-only)
        if "state_dict" not in checkpoint:
            raise ValueError(f"init_from={path} has no state_dict: give a checkpoint written by `python -m zoo fit`")
        source = {k[len("backbone.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
        target = self.backbone.state_dict()
        for name in ("embed.weight", "head.weight") if grow_vocab else ():
            old, new = source.get(name), target.get(name)
            if old is not None and new is not None and old.shape[1:] == new.shape[1:] and len(old) < len(new):
                grown = old.mean(dim=0, keepdim=True).expand(len(new) - len(old), -1)
                source[name] = torch.cat([old, grown.to(old.dtype)])
        check_state_dict_fits(target, source, source=f"init_from={path}")  # every differing parameter, named
        self.backbone.load_state_dict(source)

    # ---- the shared step -----------------------------------------------------------------------------------
    def data_module(self) -> TokenData | None:
        """The trainer's data module when it answers :class:`TokenData` (zoo's do; so may a user's own), else
        ``None``: its vocabulary, ``seq_len`` and ``batch_size`` are what the objective checks itself against.

        Read here, at ``setup``, rather than linked into the objective's arguments by LightningCLI's
        ``link_arguments``: the vocabulary exists only once the tokenizer is trained or loaded (``prepare_data``,
        rank 0 first, then every rank), after the CLI has built both objects, and a link would tie these checks to
        the CLI, where an objective built in Python (a conversion script, a test) gets them too."""
        trainer = attached_trainer(self)
        datamodule = trainer.datamodule if trainer is not None else None
        return datamodule if isinstance(datamodule, TokenData) else None

    def setup(self, stage: str) -> None:
        data = self.data_module()
        if data is not None:
            vocab, seq_len = data.vocab_size, data.seq_len
            if vocab > self.backbone.vocab_size:
                raise ValueError(
                    f"the tokenizer has {vocab} tokens but model backbone.vocab_size={self.backbone.vocab_size}: "
                    f"set backbone.vocab_size ≥ {vocab} or train a smaller tokenizer (data.tokenizer.vocab_size)"
                )
            if seq_len > self.backbone.max_seq_len:
                raise ValueError(
                    f"data.seq_len={seq_len} exceeds backbone.max_seq_len={self.backbone.max_seq_len}: "
                    f"lower data.seq_len or raise backbone.max_seq_len"
                )
            self.flops_per_batch = self.backbone.flops_per_token(seq_len) * seq_len * data.batch_size
        if self.init_from is not None:  # a resumed run then restores its own checkpoint over these weights
            self.load_backbone(self.init_from)
            self.init_from = None  # once: a later fit/validate on this object keeps the weights it has
        scope, _ = resolve_compile(self.compile_backbone, trainer=attached_trainer(self), sharded=self._sharded(),
                                   parameters=self.backbone.num_parameters(embeddings=False))
        if stage == "fit" and scope is not None:  # in place: state-dict keys unchanged; eager (warned) if it cannot
            compile_for_training(self.backbone, scope=scope)

    def forward(self, input_ids: Tensor, **kwargs) -> Tensor:
        return self.backbone(input_ids, **kwargs)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self.loss(batch)
        aux = self.backbone.auxiliary_loss()  # e.g. MoE load balancing: logged apart, added to what is optimized
        if aux is not None:
            self.log("train/aux_loss", aux)
        self.tokens_seen += batch["input_ids"].numel() * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", loss.detach().exp())
        self.log("train/tokens_seen", self.tokens_seen.float())
        if "skipped" in batch:  # bad data rows the packer skipped on this rank since the previous batch
            self.skipped_rows += batch["skipped"].sum()
            if self.global_step % self.trainer.log_every_n_steps == 0:  # summed over ranks only when it is logged
                self.log("data/skipped_rows", self.skipped_rows.float(), reduce_fx="sum", sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss if aux is None else loss + aux

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, n_tokens = self.loss(batch)
        self.val_loss.update(loss, weight=n_tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)  # MeanMetric already reduced across ranks
        self.log("val/ppl", loss.exp())

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("test/loss", loss)
        self.log("test/ppl", loss.exp())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:  # the norm before clipping
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    # ---- optimization --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = prefer_fused(self.optimizer_factory(optimizer_groups(self.backbone)))
        total = self.trainer.max_steps
        if total is None or total < 0:
            if not isinstance(self.schedule, Constant) or self.schedule.warmup_steps:
                raise ValueError(
                    "trainer.max_steps is not set, but the learning-rate schedule needs the run's length: "
                    "set --trainer.max_steps N"
                )
            total = math.inf
        scheduler = self.schedule.build(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
