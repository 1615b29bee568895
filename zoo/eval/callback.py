"""``EvalCallback``: zero-shot tasks during training, logged as ``eval/<task>/<metric>``.

From YAML::

    trainer:
      callbacks:
        - class_path: zoo.eval.EvalCallback
          init_args: {tasks: [arc_easy, piqa], every_n_steps: 1000, limit: 200, data_dir: /data/eval}

Global rank 0 evaluates, the other ranks go on and wait for it at their next collective: the tasks are small
next to a training run, and one process holding the whole model needs no gathering of scores (under FSDP, where
no rank holds the whole model, the callback refuses to run).
"""

from __future__ import annotations

import lightning as L
import torch


class EvalCallback(L.Callback):
    """Run zero-shot tasks every ``every_n_steps`` optimizer steps and log their metrics to the trainer's logger.

    Args:
        tasks: task or group names (``python -m zoo eval``'s, lm-eval's registry included; code tasks are not run
            during training).
        every_n_steps: evaluate after every this many optimizer steps.
        limit: first N documents of each task (``None`` = all); small values keep training fast.
        data_dir: folder of local task files (the layout of ``python -m zoo eval --data-dir``); ``None`` = the hub.
        batch_size: sequences per forward pass.
        mc_num: Monte-Carlo samples per ELBO for masked-diffusion models.
        on_train_end: also evaluate once when training ends.
        engine: ``auto`` (zoo's own task where it has one, else lm-eval's), ``native`` or ``harness``.
        include_path: folders of task YAMLs in lm-eval's format (harness tasks).
        num_fewshot: few-shot examples per prompt of harness tasks (``None``: each task's own).
    """

    def __init__(
        self,
        *,
        tasks: list[str],
        every_n_steps: int,
        limit: int | None = None,
        data_dir: str | None = None,
        batch_size: int = 32,
        mc_num: int = 32,
        on_train_end: bool = False,
        engine: str = "auto",
        include_path: list[str] | None = None,
        num_fewshot: int | None = None,
    ) -> None:
        from zoo.eval.engines import split_by_engine
        from zoo.eval.tasks import CODE_TASKS, resolve

        if every_n_steps < 1:
            raise ValueError(f"EvalCallback every_n_steps={every_n_steps} must be ≥ 1")
        code = [t for t in tasks if t in CODE_TASKS]
        if code:
            raise ValueError(f"EvalCallback tasks={code}: code tasks run with `python -m zoo eval`, not in training")
        # unknown names fail here, before training starts
        self.include_path, self.num_fewshot = list(include_path or []), num_fewshot
        native, self.harness_tasks = split_by_engine(list(tasks), engine=engine, include_paths=self.include_path)
        self.tasks, self.groups = resolve(native)
        self.every_n_steps, self.limit, self.data_dir = every_n_steps, limit, data_dir
        self.batch_size, self.mc_num, self.final = batch_size, mc_num, on_train_end
        self.documents: dict[str, list[dict]] = {}
        self.last_step = -1
        self.last_results: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Checked on every rank before training: refused on rank 0 alone, the others would wait for it forever.
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError(
                "EvalCallback needs the whole model on rank 0, which FSDP shards: remove it from trainer.callbacks "
                "and evaluate the checkpoints with `python -m zoo eval`"
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.final and trainer.global_step != self.last_step:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        from zoo.eval.checkpoint import make_scorer, scalars
        from zoo.eval.metrics import evaluate

        self.last_step = trainer.global_step
        if not trainer.is_global_zero:
            return {}
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "load_tokenizer"):
            raise ValueError("EvalCallback needs a zoo data module (its tokenizer scores the tasks)")
        tokenizer, eos = datamodule.load_tokenizer(), datamodule.tokenizer_source.eos_token
        scorer = make_scorer(pl_module, tokenizer, eos, batch_size=self.batch_size, mc_num=self.mc_num)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                report = {"results": {}}
                if self.tasks:
                    report = evaluate(self.tasks, scorer, groups=self.groups, data_dir=self.data_dir,
                                      limit=self.limit, documents=self.documents)  # fmt: skip
                if self.harness_tasks:
                    report["results"].update(self.run_harness(pl_module, tokenizer, eos)["results"])
        finally:
            pl_module.train(was_training)
        self.last_results = report["results"]
        metrics = scalars(report["results"])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return report

    def run_harness(self, pl_module: L.LightningModule, tokenizer, eos: str) -> dict:
        from zoo.eval.engines import evaluate_with_harness

        return evaluate_with_harness(pl_module, tokenizer, eos, self.harness_tasks, batch_size=self.batch_size,
                                     mc_num=self.mc_num, data_dir=self.data_dir, include_paths=self.include_path,
                                     limit=self.limit, num_fewshot=self.num_fewshot)  # fmt: skip
