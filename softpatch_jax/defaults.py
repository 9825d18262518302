"""Every config field, its default and what it does: the default job (SoftPatch-LOF on the ELPV
solar cells, mono and poly, 10% noise, EfficientNet-Lite0) and the sweep section.

`get_config()` is the schema too: a config given to a fit or a sweep may set only the fields
defined here (and those a registered method declares in `Method.config_fields`);
`pipeline/validation.check_known_fields` names a misspelt one, with the closest real field,
wherever it was set (a config file or the command line). configs/*.py start from these.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "elpv"             # elpv | mvtec | visa | btad | folder
    config.data.root = ""                 # elpv: '' = the elpv-dataset package's files
    config.data.source = "folder"         # folder | tfds (mvtec, visa, btad builders)
    config.data.tfds_dir = ""             # TFDS data_dir ('' = TFDS's default)
    config.data.category = "all"          # one name, a comma list, or all
    config.data.resize = 256              # shorter side, then centre crop; 0 = fit the whole image
    # the input canvas: N (N x N) or (height, width), e.g. --config.data.image_size=640,256
    config.data.image_size = ml_collections.FieldReference(224, field_type=object)
    config.data.tile = ml_collections.FieldReference(0, field_type=object)  # 0 | N | (h, w)
    config.data.batch_size = 16
    config.data.train_fraction = 0.5      # datasets without a split (ELPV): normals used to train
    config.data.max_train = 100           # cap on clean training images (0 = all), seeded draw
    config.data.max_test = 200            # cap on test images (0 = all), seeded, stratified

    config.noise = ml_collections.ConfigDict()
    config.noise.ratio = 0.1
    config.noise.overlap = False
    config.noise.mode = ""                # no_overlap | overlap | overlap_repeat; '' = from overlap
    config.noise.fold = 0                 # selects an independent draw of the noise
    config.noise.files = ""               # comma list of test sample names, overrides the draw

    # The backbone every method extracts with (features/types.BackboneSpec reads it).
    config.backbone = ml_collections.ConfigDict()
    config.backbone.name = "efficientnet_lite0"
    config.backbone.weights = ""          # '' = packaged ImageNet weights, 'random', or a .pth path
    config.backbone.layers = "stage3,stage5"  # memory-bank taps: stride-8 and stride-16 stage ends
    config.backbone.dtype = "float32"     # compute dtype: float32 | bfloat16
    config.backbone.patch_size = 3        # locally aware patch features: neighbourhood
    config.backbone.embed_dim = 1024      # locally aware patch features: pooled size

    config.model = ml_collections.ConfigDict()
    config.model.method = "softpatch"     # softpatch | softpatch_plus | patchcore | padim | fyd |
    #                                       inreach | spade | cflow
    # Image-level denoising before the fit (pipeline/prefilter.py): a method's name drops the
    # training images it finds most suspicious ('' = none), prefilter_share of them, or auto
    # (the audit's modified z-score rule on its left-out scores).
    config.model.prefilter = ""
    config.model.prefilter_share = ml_collections.FieldReference("auto", field_type=object)
    config.model.blur_sigma = 4.0         # every method: Gaussian smoothing of the anomaly maps

    # The memory bank (patchcore, softpatch, softpatch_plus).
    config.bank = ml_collections.ConfigDict()
    config.bank.coreset_ratio = 0.1
    config.bank.projection_dim = 128      # coreset and discriminators' random projection
    config.bank.num_starts = 10
    config.bank.sampler = "greedy"        # greedy (k-center coreset) | random (PatchCore-random)
    config.bank.num_nn = 1                # nearest neighbours averaged per patch score
    config.bank.reweight_neighbours = 0   # PatchCore image-score reweighting (paper: 9); 0 = off

    # Patch-level denoising (softpatch; softpatch_plus reads all but discriminator and ratio).
    config.denoise = ml_collections.ConfigDict()
    config.denoise.discriminator = "lof"  # softpatch: none (PatchCore) | nearest | gaussian | lof
    # share of the patches removed as noise, or auto: 1.5 x the share of defective images the
    # audit finds after a provisional fit at 0.15, <= 0.5 (evaluation/contamination.py)
    config.denoise.ratio = ml_collections.FieldReference(0.15, field_type=object)
    config.denoise.lof_k = 6
    # Discriminator groups: position | neighbourhood | global, or '' for the method's own:
    # softpatch position (the official code's), softpatch_plus auto (the alignment study's).
    config.denoise.grouping = ""
    config.denoise.group_radius = 2       # neighbourhood: Chebyshev window radius in patches
    # test scores times the nearest entry's weight: True, False, or auto (none where the
    # contamination estimate finds no defective image)
    config.denoise.soft_weight = ml_collections.FieldReference(True, field_type=object)

    # SoftPatch+ (secondary sources; docs/methods.md): fusion and the two banks' denoising ratios.
    config.softpatch_plus = ml_collections.ConfigDict()
    config.softpatch_plus.fusion = "lof,gaussian"
    config.softpatch_plus.fusion_rule = "mean"  # mean | max | weighted of rank-normalised scores
    config.softpatch_plus.fusion_weights = ""   # fusion_rule=weighted: one per entry, e.g. 0.7,0.3
    config.softpatch_plus.rank_norm = "global"  # ranks among all patches | position: per position
    # Soft weights: first (its raw scores) | fused | none | a discriminator's name (e.g. lof).
    config.softpatch_plus.soft_source = "first"
    config.softpatch_plus.shared_projection = True  # one coreset projection for both banks
    # classification bank (image scores) and segmentation bank (anomaly maps); either auto:
    # from the contamination estimate (cls 1.5 x, seg 5 x the defective share, <= 0.5)
    config.softpatch_plus.cls_ratio = ml_collections.FieldReference(0.15, field_type=object)
    config.softpatch_plus.seg_ratio = ml_collections.FieldReference(0.5, field_type=object)

    # PaDiM (and FYD's PaDiM): random channels of the first three levels (EfficientNet-Lite:
    # stride 4, 8, 16).
    config.padim = ml_collections.ConfigDict()
    config.padim.layers = "stage2,stage3,stage4"
    config.padim.dim = 0                  # 0 = the paper's for the backbone (100; ResNet-50s: 550)

    # FYD (model.method=fyd): alignment trained on the training images, then PaDiM on the aligned
    # maps of padim.layers. Choices beyond METHOD.md are ours (docs/methods.md, "FYD").
    config.fyd = ml_collections.ConfigDict()
    config.fyd.epochs = 6
    config.fyd.batch_size = 16
    config.fyd.optimizer = "adam"         # adam | adamw | sgd
    config.fyd.learning_rate = 1e-3
    config.fyd.schedule = "cosine"        # cosine | constant (both after a linear warm-up)
    config.fyd.warmup_steps = 10
    config.fyd.weight_decay = 1e-4        # adamw
    config.fyd.momentum = 0.9             # sgd
    config.fyd.align_images = True        # image-level spatial transformer
    config.fyd.align_features = True      # a spatial transformer after each tapped stage
    config.fyd.transform = "similarity"   # affine | similarity | rotation_scale | translation
    config.fyd.feature_transform = "similarity"
    config.fyd.padding = "zeros"          # image warp outside the frame: zeros | border
    config.fyd.max_scale = 1.25           # warp bounds (the guard against degenerate warps)
    config.fyd.max_rotation = 30.0        # degrees
    config.fyd.max_translation = 0.2      # fraction of the image size
    config.fyd.max_shear = 0.2            # affine: bound on the offsets from the identity
    config.fyd.image_weight = 1.0         # weight of the pixel loss (it trains the image warp only)
    config.fyd.pixel_factor = 4           # pixel loss on images downsampled by this (smoother)
    config.fyd.centre_weight = 10.0       # holds each warp's batch mean at the identity
    config.fyd.proj_dim = 256
    config.fyd.pred_dim = 64
    config.fyd.checkpoint_every = 1       # epochs

    # InReaCh (model.method=inreach): channels of mutual nearest neighbours across training
    # images, filtered by span and spread, as the memory bank (docs/methods.md, "InReaCh").
    config.inreach = ml_collections.ConfigDict()
    config.inreach.seeds = 10             # seed images (the first ones; official assoc_depth)
    config.inreach.min_channel_length = 3  # a channel spans more than this many images
    config.inreach.max_channel_std = 5.0  # members within this many spreads of the mean stay
    config.inreach.spread = "spherical"   # spherical: sqrt(mean |x - m|^2) | code: std of |x - m|
    config.inreach.position_weight = 5.0  # positional embedding's weight (0: none)
    config.inreach.position_test = True   # embed only where the mean training image is asymmetric
    config.inreach.position_threshold = 1000.0  # that test's mean squared difference (0-255)
    config.inreach.blur_sigma = 13.0      # map blur (pixels at data.image_size; model.blur_sigma
    #                                       is the other methods')

    # SPADE (model.method=spade): kNN over pooled image features picks each test image's nearest
    # training images; its patches' kNN distances to their patches are the map.
    config.spade = ml_collections.ConfigDict()
    config.spade.image_k = 50             # nearest training images (the paper's K)
    config.spade.pixel_k = 1              # nearest patches per test patch (the paper's kappa)

    # CFLOW-AD (model.method=cflow): a conditional normalising flow per tapped stage, trained
    # on the training fibres; the official code's defaults (docs/methods.md, "CFLOW").
    config.cflow = ml_collections.ConfigDict()
    config.cflow.layers = "stage3,stage5,stage6"  # the stride-8, -16 and -32 stage ends
    config.cflow.coupling_blocks = 8
    config.cflow.clamp_alpha = 1.9        # soft clamp of the coupling's log-scale
    config.cflow.condition_dim = 128      # positional encoding's size (a multiple of 4)
    config.cflow.fiber_batch = 256        # fibres per step (the official N)
    config.cflow.meta_epochs = 25         # learning-rate schedule's epochs ...
    config.cflow.sub_epochs = 8           # ... each this many passes over the fibres
    config.cflow.learning_rate = 2e-4     # Adam
    config.cflow.decay_rate = 0.1         # cosine decay to learning_rate * decay_rate**3
    config.cflow.warmup_epochs = 2        # meta-epochs of linear warm-up from learning_rate/10
    config.cflow.checkpoint_every = 1     # meta-epochs

    # The training-set audit (which training images are defective) and the label-free decision
    # thresholds (pipeline/decisions.py); no test label is read for either.
    config.audit = ml_collections.ConfigDict()
    config.audit.enabled = True
    config.audit.score = "left_out"       # left_out (its left-out anomaly score) | quantile | max |
    #                                       mean | removed_share (of its denoising's patch scores)
    config.audit.quantile = 0.9           # audit.score=quantile: this quantile of its patch scores
    config.audit.contamination = "auto"   # share flagged as defective, or auto (modified z > 3.5)
    config.audit.lof_pass = True          # patch-score rules without a discriminator: a LOF pass

    config.threshold = ml_collections.ConfigDict()
    config.threshold.source = "auto"      # auto | leave_one_out | kfold | none
    config.threshold.folds = 5            # kfold (and auto where leave-one-out has no form)
    config.threshold.false_reject = 0.01  # image threshold: this share of normal images rejected
    config.threshold.pixel_false_reject = 0.01  # pixel threshold: share of normal pixels

    config.runtime = ml_collections.ConfigDict()
    config.runtime.memory_budget_mb = 1024
    config.runtime.multi_device = True    # >1 device: data-parallel extraction, sharded bank
    config.runtime.exact_pruning = True   # pruned coreset and 1-NN (same results; False: dense)
    config.runtime.distributed = False    # multi-host: call jax.distributed.initialize()
    config.runtime.cache_dir = ""         # converted weights; '' = ~/.cache/softpatch_jax
    config.runtime.compilation_cache = True  # keep compiled XLA programs in <cache_dir>/xla
    return config


def sweep_section() -> ml_collections.ConfigDict:
    """`config.sweep` of the sweep driver (experiments/sweep.py, pipeline/sweep.py)."""
    sweep = ml_collections.ConfigDict()
    sweep.ratios = "0,0.05,0.1,0.2"           # comma list of noise.ratio values
    sweep.discriminators = "none,nearest,gaussian,lof"  # or any method name (methods.names())
    sweep.modes = "no_overlap"                 # comma list of noise.mode values
    sweep.overlays = True                      # anomaly-map overlays per point
    sweep.batch_points = 1                     # points run at once, coresets batched
    return sweep
