"""What ``patch_model`` did, module by module, in numbers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModuleReport:
    role: str
    name: str
    shape: tuple[int, int]
    rank: int
    dense_rows: int
    params_before: int
    params_after: int
    shares_with: str | None = None  # the role whose factors a tied module reuses
    relative_error: float | None = None  # ||W - AB||_F / ||W||_F

    @property
    def kept(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0


@dataclass
class PatchReport:
    method: str
    modules: list[ModuleReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    seconds: float = 0.0
    note: str | None = None
    sources: dict[str, int] = field(default_factory=dict)  # calibration source -> tokens gathered from it

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "calibration_sources": dict(self.sources),
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "seconds": round(self.seconds, 3),
            "note": self.note,
            "modules": [{**vars(m), "shape": list(m.shape), "kept": round(m.kept, 4)} for m in self.modules],
        }

    def __str__(self) -> str:
        lines = [
            f"hf_factor_embed: method={self.method}, {self.seconds:.2f} s",
            f"{'role':<11}{'module':<36}{'V x d':>14}{'rank':>6}{'dense':>7}{'before':>12}{'after':>12}"
            f"{'kept':>7}{'rel.err':>9}",
        ]
        for m in self.modules:
            after = f"(tied to {m.shares_with})" if m.shares_with else f"{m.params_after:,}"
            err = f"{m.relative_error:.3f}" if m.relative_error is not None else ""
            lines.append(
                f"{m.role:<11}{m.name:<36}{f'{m.shape[0]} x {m.shape[1]}':>14}{m.rank:>6}{m.dense_rows:>7}"
                f"{m.params_before:>12,}{after:>12}{m.kept:>7.1%}{err:>9}"
            )
        b, a = self.model_params_before, self.model_params_after
        lines.append(f"model parameters: {b:,} -> {a:,} ({a / b:.1%}; {b - a:,} fewer)")
        if self.sources:
            lines.append("calibrated on: " + ", ".join(f"{n} ({t:,} tokens)" for n, t in self.sources.items()))
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)
