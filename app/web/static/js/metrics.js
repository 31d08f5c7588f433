// Which charts an experiment gets, from the metric names it has written (docs/engine.md).

const GROUPS = [
  { id: "loss", title: "Loss", match: (n) => ["loss", "train_loss", "val_loss", "test_loss"].includes(n) },
  { id: "accuracy", title: "Accuracy (train / validation / test)",
    match: (n) => ["train_accuracy", "val_accuracy", "test_accuracy"].includes(n) },
  { id: "grad_norm", title: "Gradient norm before / after clipping",
    match: (n) => n === "grad_norm" || n === "grad_norm_clipped" },
  { id: "clip_fraction", title: "Clip fraction", match: (n) => n === "clip_fraction" },
  { id: "grad_layers", title: "Gradient norm per layer", match: (n) => n.startsWith("grad_norm/") },
  { id: "bn_mean", title: "BN moving mean (mean |μ|) per layer", match: (n) => /^bn\/.+\/running_mean_abs$/.test(n) },
  { id: "bn_var", title: "BN moving variance (mean σ²) per layer", match: (n) => /^bn\/.+\/running_var_mean$/.test(n) },
];

const LAYER = (name) => {
  const parts = name.split("/");
  return parts.length > 2 ? parts.slice(1, -1).join("/") : parts[parts.length - 1];
};

// Chart groups in display order: [{ id, title, names, label(name) }].
export function groupMetrics(names) {
  const sorted = [...names].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const groups = [];
  const used = new Set();
  for (const g of GROUPS) {
    const members = sorted.filter((n) => g.match(n));
    if (!members.length) continue;
    members.forEach((n) => used.add(n));
    const perLayer = g.id === "grad_layers" || g.id.startsWith("bn_");
    groups.push({ id: g.id, title: g.title, names: members, label: perLayer ? LAYER : (n) => n });
  }
  // Activation percentiles p15/p50/p85, one chart per layer (Ioffe & Szegedy, Fig. 1).
  const layers = [...new Set(sorted.filter((n) => /^act\/.+\/p\d+$/.test(n)).map(LAYER))];
  for (const layer of layers) {
    const members = ["p15", "p50", "p85"].map((p) => `act/${layer}/${p}`).filter((n) => sorted.includes(n));
    members.forEach((n) => used.add(n));
    groups.push({ id: `act/${layer}`, title: `Pre-activation percentiles, ${layer}`, names: members,
      label: (n) => n.split("/").pop() });
  }
  for (const n of sorted) {
    if (!used.has(n)) groups.push({ id: n, title: n, names: [n], label: (x) => x });
  }
  return groups;
}
