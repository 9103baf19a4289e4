"""pipeline_stage: one step of the artifact chain, run by a py_binary as a cacheable Bazel action.

A stage maps its input files and outputs to the tool's flags:

    pipeline_stage(
        name = "checkpoint",
        tool = "//training:run_toy_distill",
        mnemonic = "M8bTrain",
        inputs = {"in": ":kd.jsonl", "tokenizer": ":tokenizer.json"},
        outputs = {"out_weights": "student.safetensors"},
        args = ["--steps=600"],
    )

runs `run_toy_distill --in=<kd.jsonl> --tokenizer=<tokenizer.json> --out_weights=<...> --steps=600`.
Output files get labels of their own (":student.safetensors"). Outputs that are directories, such
as a Core ML .mlpackage, go in `output_dirs`; Bazel tracks them as tree artifacts, and they are
the stage target's only default output, so later stages name them by the stage's label.
Each stage has its own mnemonic, so build logs and cache statistics tell stages apart.
"""

def _single_file(target, flag):
    files = target.files.to_list()
    if len(files) != 1:
        fail("--%s: %s provides %d files; name one file (or a stage with one directory output)" % (
            flag,
            target.label,
            len(files),
        ))
    return files[0]

def _pipeline_stage_impl(ctx):
    args = ctx.actions.args()
    inputs = []
    for target, flag in ctx.attr.inputs.items():
        file = _single_file(target, flag)
        inputs.append(file)
        args.add("--%s=%s" % (flag, file.path))
    outputs = []
    for flag, file in zip(ctx.attr.output_flags, ctx.outputs.outs):
        outputs.append(file)
        args.add("--%s=%s" % (flag, file.path))
    directories = []
    for flag, name in zip(ctx.attr.output_dir_flags, ctx.attr.output_dir_names):
        directory = ctx.actions.declare_directory(name)
        directories.append(directory)
        args.add("--%s=%s" % (flag, directory.path))
    args.add_all(ctx.attr.args)
    ctx.actions.run(
        executable = ctx.executable.tool,
        arguments = [args],
        inputs = inputs,
        outputs = outputs + directories,
        mnemonic = ctx.attr.mnemonic,
        progress_message = "%s %s" % (ctx.attr.mnemonic, ctx.label),
        env = {
            # Same inputs, same bytes: fix the hash seed so nothing varies between runs.
            "PYTHONHASHSEED": "0",
            # Tools size their own thread pools (the trainer uses --threads); idle BLAS/OpenMP
            # pools spinning on 2 cores made small forwards 5-50x slower.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        },
    )
    default = directories or outputs
    # runfiles too: a binary or test that lists this stage in `data` must see its directories.
    return [DefaultInfo(files = depset(default), runfiles = ctx.runfiles(files = default))]

_pipeline_stage = rule(
    implementation = _pipeline_stage_impl,
    attrs = {
        "tool": attr.label(executable = True, cfg = "exec", mandatory = True),
        "mnemonic": attr.string(mandatory = True),
        "inputs": attr.label_keyed_string_dict(allow_files = True),
        "outs": attr.output_list(),
        "output_flags": attr.string_list(),
        "output_dir_names": attr.string_list(),
        "output_dir_flags": attr.string_list(),
        "args": attr.string_list(),
    },
)

def pipeline_stage(name, tool, mnemonic, inputs = {}, input_lists = {}, outputs = {}, output_dirs = {}, args = [], **kwargs):
    """A pipeline step: `tool --<flag>=<input> ... --<flag>=<output> ... <args>`.

    Args:
      name: the stage's target name.
      tool: a py_binary label.
      mnemonic: the action's name in logs and cache statistics.
      inputs: {flag: label of one file}.
      input_lists: {flag: [labels of one file each]}: the flag is repeated, once per file.
      outputs: {flag: file name}; each output gets the label ":<file name>".
      output_dirs: {flag: directory name}; the stage target's default outputs.
      args: further flags, passed as written.
      **kwargs: common attributes (visibility, tags).
    """
    by_label = {label: flag for flag, label in inputs.items()}
    by_label.update({label: flag for flag, labels in input_lists.items() for label in labels})
    _pipeline_stage(
        name = name,
        tool = tool,
        mnemonic = mnemonic,
        inputs = by_label,
        outs = outputs.values(),
        output_flags = outputs.keys(),
        output_dir_names = output_dirs.values(),
        output_dir_flags = output_dirs.keys(),
        args = args,
        **kwargs
    )

# The default configuration's dataset flags and contract lengths (the default chain in
# pipeline/BUILD.bazel and every configuration that does not name its own). The longest length is
# the trainer's default --max_seq_len (training/config.py); a configuration with a longer context
# sets --max_seq_len in its train_args and names its lengths.
DEFAULT_DATASET_ARGS = ["--n=6000", "--seed=0", "--heldout_fraction=0.2", "--topk=8"]
DEFAULT_LENGTHS = [64, 128, 256]

# The quantized GGUF variants every chain ships and verifies (conversion/gguf_quant.py QUANTIZED):
# stage `gguf_<variant lower>`, file magic-8-ball.<variant>.gguf, Modelfile.<variant>, verify flag
# --gguf_<variant lower>, backend gguf_<variant lower> (conversion/gates.py DEFAULT_BACKENDS).
GGUF_VARIANTS = ["Q8_0", "Q4_0"]

# What a named configuration builds and verifies: every artifact but the Core ML int8/int4 variants
# and the stateful Core ML package, which only the default chain builds (their verification adds the
# executor's forwards and decode steps, about 20 s each a configuration).
CHAIN_BACKENDS = ["coreml", "coreml_fp32", "gguf", "gguf_f16", "gguf_kv_f16", "torchscript", "torchscript_decoder"] + [
    "gguf_" + variant.lower()
    for variant in GGUF_VARIANTS
]

def student_chain(
        name,
        dataset = ":kd.jsonl",
        tokenizer = ":tokenizer.json",
        dataset_args = None,
        train_args = [],
        lengths = DEFAULT_LENGTHS,
        e2e = False):
    """A named pipeline configuration: dataset -> train -> floors -> TorchScript + contract -> Core ML
    -> GGUF -> report, and `<name>_gates_test`, which fails when any of its gates failed or anything
    its contract names was not verified.

    Every output is prefixed `<name>.` (":<name>.report.json", ":<name>.magic-8-ball.gguf", ...).
    The default chain in pipeline/BUILD.bazel is written out stage by stage with the same tools.

    Args:
      name: the configuration's name: prefix of every target and file.
      dataset: label of kd.jsonl to train on (default: the default chain's); ignored with dataset_args.
      tokenizer: label of its tokenizer.json; ignored with dataset_args.
      dataset_args: flags for //data:make_toy_kd (e.g. DEFAULT_DATASET_ARGS with another --seed): the
        configuration then builds its own dataset and tokenizer, ":<name>.kd.jsonl".
      train_args: flags for the trainer: the seed and the architecture (--seed, --d_model, --n_layers,
        --n_heads, --n_kv_heads, --ffn_hidden, --max_seq_len, --rope_theta, --tie_embeddings).
      lengths: the contract lengths (ints); each at most the --max_seq_len of train_args.
      e2e: also render ":<name>.report.html" and add `e2e_<name>`, which prints the verdict and
        copies every artifact to dist/<name>/ (`bazel run //pipeline:e2e_<name>`).
    """
    pre = name + "."
    lengths_flag = "--lengths=" + ",".join([str(length) for length in lengths])
    if dataset_args != None:
        pipeline_stage(
            name = name + "_dataset",
            tool = "//data:make_toy_kd",
            mnemonic = "M8bDataset",
            outputs = {"out": pre + "kd.jsonl", "tokenizer_out": pre + "tokenizer.json"},
            args = dataset_args,
        )
        dataset, tokenizer = ":" + pre + "kd.jsonl", ":" + pre + "tokenizer.json"
    pipeline_stage(
        name = name + "_checkpoint",
        tool = "//training:run_toy_distill",
        mnemonic = "M8bTrain",
        inputs = {"in": dataset, "tokenizer": tokenizer},
        outputs = {
            "out_weights": pre + "student.safetensors",
            "out_metadata": pre + "student.json",
            "out_history": pre + "loss_history.jsonl",
        },
        args = train_args,
    )
    checkpoint = {"weights": ":" + pre + "student.safetensors", "metadata": ":" + pre + "student.json"}
    pipeline_stage(
        name = name + "_floors",
        tool = "//verify:measure_floors",
        mnemonic = "M8bFloors",
        inputs = dict(checkpoint, tokenizer = tokenizer, dataset = dataset),
        outputs = {"out": pre + "floors.json"},
        args = [lengths_flag],
    )
    pipeline_stage(
        name = name + "_torchscript",
        tool = "//conversion:export_pytorch",
        mnemonic = "M8bTorchScript",
        inputs = dict(checkpoint, tokenizer = tokenizer, floors = ":" + pre + "floors.json"),
        outputs = {
            "out_torchscript": pre + "magic-8-ball.pt",
            "out_decoder": pre + "magic-8-ball.decode.pt",
            "out_contract": pre + "contract.json",
        },
        args = [lengths_flag, "--verify_backends=" + ",".join(CHAIN_BACKENDS)],
    )
    pipeline_stage(
        name = name + "_coreml",
        tool = "//conversion:convert_coreml",
        mnemonic = "M8bCoreML",
        inputs = dict(checkpoint, contract = ":" + pre + "contract.json"),
        output_dirs = {"out": pre + "magic-8-ball.mlpackage"},
        args = ["--precision=fp16"],
    )
    pipeline_stage(
        name = name + "_gguf",
        tool = "//conversion:export_gguf",
        mnemonic = "M8bGGUF",
        inputs = dict(checkpoint, tokenizer = tokenizer),
        outputs = {"out": pre + "magic-8-ball.gguf", "modelfile_out": pre + "Modelfile"},
        args = ["--dtype=f32"],
    )
    pipeline_stage(
        name = name + "_coreml_fp32",
        tool = "//conversion:convert_coreml",
        mnemonic = "M8bCoreML",
        inputs = dict(checkpoint, contract = ":" + pre + "contract.json"),
        output_dirs = {"out": pre + "magic-8-ball.fp32.mlpackage"},
        args = ["--precision=fp32"],
    )
    pipeline_stage(
        name = name + "_gguf_f16",
        tool = "//conversion:export_gguf",
        mnemonic = "M8bGGUF",
        inputs = dict(checkpoint, tokenizer = tokenizer),
        outputs = {"out": pre + "magic-8-ball.f16.gguf", "modelfile_out": pre + "Modelfile.f16"},
        args = ["--dtype=f16"],
    )
    for variant in GGUF_VARIANTS:
        pipeline_stage(
            name = name + "_gguf_" + variant.lower(),
            tool = "//conversion:export_gguf",
            mnemonic = "M8bGGUF",
            inputs = dict(checkpoint, tokenizer = tokenizer),
            outputs = {
                "out": pre + "magic-8-ball.%s.gguf" % variant,
                "modelfile_out": pre + "Modelfile.%s" % variant,
            },
            args = ["--dtype=" + variant],
        )
    variant_inputs = {
        "gguf_" + variant.lower(): ":" + pre + "magic-8-ball.%s.gguf" % variant
        for variant in GGUF_VARIANTS
    }
    pipeline_stage(
        name = name + "_verify",
        tool = "//verify:verify_contracts",
        mnemonic = "M8bVerify",
        inputs = dict(
            checkpoint,
            contract = ":" + pre + "contract.json",
            tokenizer = tokenizer,
            dataset = dataset,
            torchscript = ":" + pre + "magic-8-ball.pt",
            torchscript_decoder = ":" + pre + "magic-8-ball.decode.pt",
            mlpackage = ":" + name + "_coreml",
            gguf = ":" + pre + "magic-8-ball.gguf",
            mlpackage_fp32 = ":" + name + "_coreml_fp32",
            gguf_f16 = ":" + pre + "magic-8-ball.f16.gguf",
            **variant_inputs
        ),
        outputs = {"out_report": pre + "report.json"},
        args = ["--noexit_nonzero_on_failed_gates"],
    )
    native.py_test(
        name = name + "_gates_test",
        srcs = ["gates_test.py"],
        main = "gates_test.py",
        args = ["$(rootpath :%sreport.json)" % pre, "$(rootpath :%scontract.json)" % pre],
        data = [":" + pre + "report.json", ":" + pre + "contract.json"],
        python_version = "PY3",
    )
    if not e2e:
        return
    pipeline_stage(
        name = name + "_report_html",
        tool = "//verify:render_report",
        mnemonic = "M8bReportHtml",
        inputs = dict(
            checkpoint,
            report = ":" + pre + "report.json",
            contract = ":" + pre + "contract.json",
            history = ":" + pre + "loss_history.jsonl",
            tokenizer = tokenizer,
            dataset = dataset,
        ),
        outputs = {"out_html": pre + "report.html"},
    )

    # The artifacts `e2e_<name>` prints and copies: stage=gate=path, as for the default `e2e`.
    artifacts = {
        dataset: "dataset=-",
        tokenizer: "dataset=-",
        ":" + pre + "student.safetensors": "checkpoint=-",
        ":" + pre + "student.json": "checkpoint=-",
        ":" + pre + "loss_history.jsonl": "checkpoint=-",
        ":" + pre + "floors.json": "floors=-",
        ":" + pre + "magic-8-ball.pt": "torchscript=torchscript",
        ":" + pre + "magic-8-ball.decode.pt": "torchscript=torchscript_decoder",
        ":" + pre + "contract.json": "torchscript=-",
        ":" + name + "_coreml": "coreml=coreml",
        ":" + pre + "magic-8-ball.gguf": "gguf=gguf",
        ":" + pre + "Modelfile": "gguf=-",
    }
    for variant in GGUF_VARIANTS:
        stage = "gguf_" + variant.lower()
        artifacts[":" + pre + "magic-8-ball.%s.gguf" % variant] = "%s=%s" % (stage, stage)
        artifacts[":" + pre + "Modelfile.%s" % variant] = stage + "=-"
    artifacts.update({
        ":" + pre + "report.json": "verify=-",
        ":" + pre + "report.html": "report=-",
    })
    e2e_binary(name = "e2e_" + name, report = ":" + pre + "report.json", artifacts = artifacts, dist_subdir = name)

def e2e_binary(name, report, artifacts, dist_subdir = ""):
    """`bazel run` target that prints a configuration's verdict table and copies its artifacts to
    dist/ (dist/<dist_subdir>/ for a named configuration): pipeline/e2e.py.

    Args:
      name: the target's name.
      report: label of the configuration's report.json.
      artifacts: {label: "stage=gate"} in table order (gate "-": not verified itself).
      dist_subdir: directory under dist/.
    """
    native.py_binary(
        name = name,
        srcs = ["e2e.py"],
        main = "e2e.py",
        args = ["--report=$(rootpath %s)" % report] + (["--dist_subdir=" + dist_subdir] if dist_subdir else []) + [
            "--artifact=%s=$(rootpath %s)" % (spec, label)
            for label, spec in artifacts.items()
        ],
        data = artifacts.keys(),
        python_version = "PY3",
        deps = [
            "//common:atomic",
            "//common:cli",
            "//common:digest",
            "//common:errors",
            "@pip//:absl_py",
        ],
    )
