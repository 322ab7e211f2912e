"""The toy-model numbers Lamparth & Reuel report (arXiv 2302.12461), to print beside ours.

These are the paper's figures, used only as reference columns; every number of ours is computed.
Layers are 1-indexed in the paper and 0-indexed here (paper layer 1 = ``blocks.0``).
"""

# Table I: top-10 negativity on p+t with one module mean-ablated.
MEAN_ABLATION_PT = {
    "sent2": {"blocks.0.attn": 0.00, "blocks.0.mlp": 0.00, "blocks.1.attn": 0.44, "blocks.1.mlp": 0.00,
              "blocks.2.attn": 0.08, "blocks.2.mlp": 0.00, "none": 0.35},
    "sent3": {"blocks.0.attn": 0.00, "blocks.0.mlp": 0.00, "blocks.1.attn": 0.63, "blocks.1.mlp": 0.00,
              "blocks.2.attn": 0.50, "blocks.2.mlp": 0.00, "none": 0.23},
}

# Table II (3-sentiment model, p+t inputs): (negativity, positivity) at the p and the t position.
LOGIT_LENS = {
    "blocks.0.attn.head0": ((0.36, 0.23), (0.54, 0.46)),
    "blocks.0.attn.head1": ((0.23, 0.50), (0.12, 0.50)),
    "blocks.0.attn.head2": ((0.10, 0.35), (0.50, 0.50)),
    "blocks.0.attn.head3": ((0.15, 0.49), (0.43, 0.57)),
    "blocks.0.mlp": ((0.26, 0.74), (1.00, 0.00)),
    "blocks.1.attn.head0": ((0.00, 0.91), (0.06, 0.94)),
    "blocks.1.attn.head1": ((0.00, 0.91), (0.06, 0.94)),
    "blocks.1.attn.head2": ((0.00, 0.91), (0.06, 0.94)),
    "blocks.1.attn.head3": ((0.00, 0.91), (0.06, 0.94)),
    "blocks.1.mlp": ((0.00, 1.00), (0.00, 1.00)),
    "blocks.2.attn.head0": ((0.00, 1.00), (0.02, 0.98)),
    "blocks.2.attn.head1": ((0.00, 1.00), (0.09, 0.91)),
    "blocks.2.attn.head2": ((0.00, 1.00), (0.40, 0.60)),
    "blocks.2.attn.head3": ((0.00, 1.00), (0.29, 0.71)),
    "blocks.2.mlp": ((0.00, 1.00), (0.75, 0.25)),
    "full model": ((0.00, 1.00), (0.23, 0.77)),
}

# Causal patching table (3-sentiment model): negativity on p+t after patching, and the effect.
PATCHING = {
    "blocks.0.attn": (0.00, -0.23), "blocks.0.mlp": (0.03, -0.20),
    "blocks.1.attn": (0.00, -0.23), "blocks.1.mlp": (0.00, -0.23),
    "blocks.2.attn": (0.00, -0.23), "blocks.2.mlp": (0.01, -0.22),
}

# Tables III / IV: PCP replacement of MLPs (rank 1 for sent2, rank 2 for sent3): per class, val loss.
PCP_MLP = {
    "sent2": {
        "none": {"p+p": 0.01, "n+n": 1.00, "p+n": 1.00, "n+p": 0.04, "p+t": 0.35, "val_loss": 5.46},
        "blocks.0.mlp": {"p+p": 0.00, "n+n": 1.00, "p+n": 1.00, "n+p": 0.00, "p+t": 0.35, "val_loss": 6.25},
        "blocks.2.mlp": {"p+p": 0.00, "n+n": 1.00, "p+n": 1.00, "n+p": 0.04, "p+t": 0.35, "val_loss": 5.46},
    },
    "sent3": {
        "none": {"p+p": 0.01, "n+n": 1.00, "s+s": 0.00, "p+n": 1.00, "n+p": 0.04, "p+t": 0.23, "s+t": 0.38, "val_loss": 5.50},
        "blocks.0.mlp": {"p+p": 0.05, "n+n": 0.98, "s+s": 0.00, "p+n": 0.86, "n+p": 0.07, "p+t": 0.23, "s+t": 0.38, "val_loss": 6.21},
        "blocks.2.mlp": {"p+p": 0.01, "n+n": 1.00, "s+s": 0.00, "p+n": 1.00, "n+p": 0.03, "p+t": 0.23, "s+t": 0.37, "val_loss": 5.50},
    },
}

# Table V (sent2, rank-1 PCP of the layer-1 MLP): p+t negativity and val loss per relative factor.
SCALING_SWEEP = {0.6: (0.00, 5.96), 0.75: (0.17, 6.11), 0.8: (0.20, 6.16), 1.0: (0.35, 6.25), 1.1: (0.42, 6.28)}

# Table VI (sent3, rank-2 PCP of the layer-1 MLP, factors (-1.2, 0.5)): negativity per class.
SIGN_FLIP = {"p+p": 0.01, "n+n": 0.08, "s+s": 0.00, "p+n": 0.02, "n+p": 0.02, "p+t": 0.41, "s+t": 0.68, "val_loss": 5.83}

# Tables VII / XIII / XIV: rank-4 PCP of the layer-2 attention: p+t barely moves.
ATTENTION_PCP_PT = {"sent2": {"none": 0.35, "replaced": 0.36}, "sent3": {"none": 0.23, "replaced": 0.24, "varied": (0.30, 0.26)}}

# Freezing (text only): without trainable MLPs a weak backdoor still forms, needing ~50% more steps
# and reaching ~60% lower negativity; MLP freezing delays emergence.
FREEZING_CLAIM = (
    "Without trainable MLPs a weak backdoor still forms but needs ~50% more steps and reaches ~60% "
    "lower p+t negativity; freezing MLPs delays the backdoor's emergence."
)
