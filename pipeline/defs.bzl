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
        args.add("--%s=%s%s" % (flag, ctx.attr.input_prefixes.get(flag, ""), file.path))
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
        "input_prefixes": attr.string_dict(),
        "outs": attr.output_list(),
        "output_flags": attr.string_list(),
        "output_dir_names": attr.string_list(),
        "output_dir_flags": attr.string_list(),
        "args": attr.string_list(),
    },
)

def pipeline_stage(
        name,
        tool,
        mnemonic,
        inputs = {},
        input_prefixes = {},
        input_lists = {},
        outputs = {},
        output_dirs = {},
        args = [],
        **kwargs):
    """A pipeline step: `tool --<flag>=<input> ... --<flag>=<output> ... <args>`.

    Args:
      name: the stage's target name.
      tool: a py_binary label.
      mnemonic: the action's name in logs and cache statistics.
      inputs: {flag: label of one file}.
      input_prefixes: {flag: text written before that input's path}, for a flag whose value is
        more than a path: {"teacher": "gguf:"} gives `--teacher=gguf:<path>`.
      input_lists: {flag: [labels of one file each]}: the flag is repeated, once per file.
      outputs: {flag: file name}; each output gets the label ":<file name>".
      output_dirs: {flag: directory name}; the stage target's default outputs.
      args: further flags, passed as written.
      **kwargs: common attributes (visibility, tags).
    """
    unknown = [flag for flag in input_prefixes if flag not in inputs]
    if unknown:
        fail("pipeline_stage %s: input_prefixes names --%s, which is not one of its inputs" % (name, unknown[0]))
    by_label = {label: flag for flag, label in inputs.items()}
    by_label.update({label: flag for flag, labels in input_lists.items() for label in labels})
    _pipeline_stage(
        name = name,
        tool = tool,
        mnemonic = mnemonic,
        inputs = by_label,
        input_prefixes = input_prefixes,
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
# and the stateful Core ML package, which the default chain builds and a chain adds with
# `coreml_variants = True` (their verification adds the executor's forwards and decode steps,
# about 20 s each a configuration).
CHAIN_BACKENDS = ["coreml", "coreml_fp32", "gguf", "gguf_f16", "gguf_kv_f16", "torchscript", "torchscript_decoder"] + [
    "gguf_" + variant.lower()
    for variant in GGUF_VARIANTS
]

# The Core ML packages `coreml_variants = True` adds, as the default chain builds them:
# (backend and stage suffix, verify_contracts flag, package name, mnemonic, convert_coreml flags).
COREML_VARIANTS = [
    ("coreml_int8", "mlpackage_int8", "magic-8-ball.int8.mlpackage", "M8bCoreMLInt8", ["--compress=int8"]),
    ("coreml_int4", "mlpackage_int4", "magic-8-ball.int4.mlpackage", "M8bCoreMLInt4", ["--compress=int4", "--target=iOS18"]),
    ("coreml_stateful", "mlpackage_stateful", "magic-8-ball.stateful.mlpackage", "M8bCoreMLStateful", ["--stateful"]),
]

# make_toy_kd flags a chain sets itself: its dataset stage names the outputs, and the teacher comes
# from `teacher_gguf` (a label, so Bazel tracks the file) or from a pinned capture (`dataset`).
_CHAIN_DATASET_FLAGS = ["--teacher", "--out", "--tokenizer_out", "--tokenizer", "--num_shards", "--shard", "--cache_dir"]

_HEX = "0123456789abcdef"

def _check_chain_args(name, dataset, dataset_sha256, tokenizer, dataset_args, teacher_gguf, teacher_agreement, coreml_variants, e2e):
    """fail() with one clear message for a combination of student_chain arguments that cannot work."""
    where = "student_chain(name = \"%s\")" % name
    if dataset_args != None or teacher_gguf != None:
        given = [arg for arg, value in [("dataset", dataset), ("dataset_sha256", dataset_sha256), ("tokenizer", tokenizer)] if value != None]
        if given:
            fail("%s: %s names a dataset made elsewhere, but %s makes this chain build its own; give one or the other" % (
                where,
                given[0],
                "teacher_gguf" if teacher_gguf != None else "dataset_args",
            ))
    if dataset_sha256 != None:
        if dataset == None:
            fail("%s: dataset_sha256 pins the file named by `dataset`; add dataset = \"<label of the captured kd.jsonl>\"" % where)
        if type(dataset_sha256) != "string" or len(dataset_sha256) != 64 or dataset_sha256.lstrip(_HEX) != "":
            fail("%s: dataset_sha256 is %r; give the file's sha256 as 64 lower-case hex digits (`sha256sum FILE`)" % (where, dataset_sha256))
    if tokenizer != None and dataset == None:
        fail("%s: tokenizer names the tokenizer of `dataset`; give dataset too (and dataset_sha256 for a capture)" % where)
    for arg in dataset_args or []:
        for flag in _CHAIN_DATASET_FLAGS:
            if arg == flag or arg.startswith(flag + "="):
                if flag == "--teacher":
                    fail(("%s: dataset_args has %s; a GGUF teacher is `teacher_gguf = \"<label of the .gguf>\"` (Bazel then " +
                          "tracks the file), and a server's capture enters as dataset + dataset_sha256 (a build action " +
                          "reaches no server): docs/bring_your_own_teacher.md") % (where, arg))
                fail("%s: dataset_args has %s, which the chain's dataset stage sets itself; leave it out" % (where, arg))
    if teacher_gguf == None and teacher_agreement != None:
        fail("%s: teacher_agreement compares the student with its teacher GGUF; it needs teacher_gguf" % where)
    for arg, value in [("teacher_agreement", teacher_agreement), ("coreml_variants", coreml_variants), ("e2e", e2e)]:
        if value != None and type(value) != "bool":
            fail("%s: %s is %r; use True or False" % (where, arg, value))

def student_chain(
        name,
        dataset = None,
        dataset_sha256 = None,
        tokenizer = None,
        dataset_args = None,
        teacher_gguf = None,
        teacher_agreement = None,
        train_args = [],
        lengths = DEFAULT_LENGTHS,
        coreml_variants = False,
        e2e = False):
    """A named pipeline configuration: dataset -> train -> floors -> TorchScript + contract -> Core ML
    -> GGUF -> report, and `<name>_gates_test`, which fails when any of its gates failed or anything
    its contract names was not verified.

    Every output is prefixed `<name>.` (":<name>.report.json", ":<name>.magic-8-ball.gguf", ...).
    The default chain in pipeline/BUILD.bazel is written out stage by stage with the same tools.

    Where the dataset comes from, one of:
      - nothing given: the default chain's ":kd.jsonl" and ":tokenizer.json";
      - dataset_args: `//data:make_toy_kd` with these flags (the rule-based teacher), in a stage;
      - teacher_gguf: `//data:make_toy_kd --teacher=gguf:<path>` with dataset_args (default
        DEFAULT_DATASET_ARGS), in a stage: llama.cpp runs the teacher in the action;
      - dataset + dataset_sha256: a file made outside the graph (a capture from a server with
        `bazel run //data:make_toy_kd -- --teacher=openai:URL ...`). The chain's first stage checks
        its sha256 against the pin and stops with both digests when they differ; every later stage
        reads that checked copy, ":<name>.kd.jsonl". The dataset header pins its tokenizer
        (tokenizer_sha256), which the trainer checks.
    Any other combination fails when the BUILD file is loaded.

    Args:
      name: the configuration's name: prefix of every target and file.
      dataset: label of a kd.jsonl to train on; with dataset_sha256 for a file made outside the graph
        (docs/bring_your_own_teacher.md). Default: the default chain's.
      dataset_sha256: the sha256 of `dataset` as 64 lower-case hex digits (`sha256sum FILE`).
      tokenizer: label of the tokenizer.json of `dataset` (default: the default chain's, which every
        make_toy_kd run writes alike).
      dataset_args: flags for //data:make_toy_kd (e.g. DEFAULT_DATASET_ARGS with another --seed): the
        configuration then builds its own dataset and tokenizer, ":<name>.kd.jsonl". Never --teacher
        (use teacher_gguf) nor the output flags.
      teacher_gguf: label of a .gguf file to distil from (a GGUF whose vocabulary maps onto the
        student tokenizer's, or with `--kd=sequence` in dataset_args any GGUF), e.g. another chain's
        ":wide.magic-8-ball.gguf".
      teacher_agreement: with teacher_gguf (default True): add the teacher-agreement gate
        (//verify:check_teacher_agreement, ":<name>.teacher_agreement.json" and the test
        `<name>_teacher_agreement_test`). Set False for a teacher of another vocabulary, whose
        next-token distributions cannot be compared with the student's token for token.
      train_args: flags for the trainer: the seed and the architecture (--seed, --d_model, --n_layers,
        --n_heads, --n_kv_heads, --ffn_hidden, --max_seq_len, --rope_theta, --tie_embeddings).
      lengths: the contract lengths (ints); each at most the --max_seq_len of train_args.
      coreml_variants: also build and verify the Core ML int8, int4 and stateful packages
        (COREML_VARIANTS), as the default chain does.
      e2e: also render ":<name>.report.html" and add `e2e_<name>`, which prints the verdict and
        copies every artifact to dist/<name>/ (`bazel run //pipeline:e2e_<name>`).
    """
    _check_chain_args(name, dataset, dataset_sha256, tokenizer, dataset_args, teacher_gguf, teacher_agreement, coreml_variants, e2e)
    pre = name + "."
    lengths_flag = "--lengths=" + ",".join([str(length) for length in lengths])
    if dataset_args != None or teacher_gguf != None:
        inputs, prefixes = {}, {}
        if teacher_gguf != None:
            inputs, prefixes = {"teacher": teacher_gguf}, {"teacher": "gguf:"}
        pipeline_stage(
            name = name + "_dataset",
            tool = "//data:make_toy_kd",
            mnemonic = "M8bDatasetGGUFTeacher" if teacher_gguf != None else "M8bDataset",
            inputs = inputs,
            input_prefixes = prefixes,
            outputs = {"out": pre + "kd.jsonl", "tokenizer_out": pre + "tokenizer.json"},
            args = dataset_args if dataset_args != None else DEFAULT_DATASET_ARGS,
        )
        dataset, tokenizer = ":" + pre + "kd.jsonl", ":" + pre + "tokenizer.json"
    elif dataset_sha256 != None:
        pipeline_stage(
            name = name + "_dataset",
            tool = "//pipeline:check_sha256",
            mnemonic = "M8bDatasetPin",
            inputs = {"in": dataset},
            outputs = {"out": pre + "kd.jsonl"},
            args = [
                "--sha256=" + dataset_sha256,
                "--pinned_by=dataset_sha256 of student_chain(name = \"%s\") in %s" % (name, native.package_name() + "/BUILD.bazel"),
            ],
        )
        dataset = ":" + pre + "kd.jsonl"
    dataset = dataset or ":kd.jsonl"
    tokenizer = tokenizer or ":tokenizer.json"
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
    backends = CHAIN_BACKENDS + ([variant[0] for variant in COREML_VARIANTS] if coreml_variants else [])
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
        args = [lengths_flag, "--verify_backends=" + ",".join(backends)],
    )
    contract = dict(checkpoint, contract = ":" + pre + "contract.json")

    # Every verified artifact once: (verify_contracts flag, label, backend it is verified as, stage,
    # the files that ship beside it). The verify stage's inputs and e2e_<name>'s rows both come from
    # this list, so e2e cannot leave out an artifact the report gates.
    verified = [
        ("torchscript", ":" + pre + "magic-8-ball.pt", "torchscript", "torchscript", []),
        ("torchscript_decoder", ":" + pre + "magic-8-ball.decode.pt", "torchscript_decoder", "torchscript", []),
    ]
    pipeline_stage(
        name = name + "_coreml",
        tool = "//conversion:convert_coreml",
        mnemonic = "M8bCoreML",
        inputs = contract,
        output_dirs = {"out": pre + "magic-8-ball.mlpackage"},
        args = ["--precision=fp16"],
    )
    verified.append(("mlpackage", ":" + name + "_coreml", "coreml", "coreml", []))
    pipeline_stage(
        name = name + "_gguf",
        tool = "//conversion:export_gguf",
        mnemonic = "M8bGGUF",
        inputs = dict(checkpoint, tokenizer = tokenizer),
        outputs = {"out": pre + "magic-8-ball.gguf", "modelfile_out": pre + "Modelfile"},
        args = ["--dtype=f32"],
    )
    verified.append(("gguf", ":" + pre + "magic-8-ball.gguf", "gguf", "gguf", [":" + pre + "Modelfile"]))
    pipeline_stage(
        name = name + "_coreml_fp32",
        tool = "//conversion:convert_coreml",
        mnemonic = "M8bCoreML",
        inputs = contract,
        output_dirs = {"out": pre + "magic-8-ball.fp32.mlpackage"},
        args = ["--precision=fp32"],
    )
    verified.append(("mlpackage_fp32", ":" + name + "_coreml_fp32", "coreml_fp32", "coreml_fp32", []))
    pipeline_stage(
        name = name + "_gguf_f16",
        tool = "//conversion:export_gguf",
        mnemonic = "M8bGGUF",
        inputs = dict(checkpoint, tokenizer = tokenizer),
        outputs = {"out": pre + "magic-8-ball.f16.gguf", "modelfile_out": pre + "Modelfile.f16"},
        args = ["--dtype=f16"],
    )
    verified.append(("gguf_f16", ":" + pre + "magic-8-ball.f16.gguf", "gguf_f16", "gguf_f16", [":" + pre + "Modelfile.f16"]))
    for variant in GGUF_VARIANTS:
        stage = "gguf_" + variant.lower()
        pipeline_stage(
            name = name + "_" + stage,
            tool = "//conversion:export_gguf",
            mnemonic = "M8bGGUF",
            inputs = dict(checkpoint, tokenizer = tokenizer),
            outputs = {
                "out": pre + "magic-8-ball.%s.gguf" % variant,
                "modelfile_out": pre + "Modelfile.%s" % variant,
            },
            args = ["--dtype=" + variant],
        )
        verified.append((stage, ":" + pre + "magic-8-ball.%s.gguf" % variant, stage, stage, [":" + pre + "Modelfile.%s" % variant]))
    if coreml_variants:
        for backend, flag, package, mnemonic, args in COREML_VARIANTS:
            pipeline_stage(
                name = name + "_" + backend,
                tool = "//conversion:convert_coreml",
                mnemonic = mnemonic,
                inputs = contract,
                output_dirs = {"out": pre + package},
                args = args,
            )
            verified.append((flag, ":" + name + "_" + backend, backend, backend, []))
    pipeline_stage(
        name = name + "_verify",
        tool = "//verify:verify_contracts",
        mnemonic = "M8bVerify",
        inputs = dict(
            contract,
            tokenizer = tokenizer,
            dataset = dataset,
            **{flag: label for flag, label, _, _, _ in verified}
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
        deps = ["//conversion:gates"],
    )
    agreement = teacher_gguf != None and teacher_agreement != False
    if agreement:
        # The student against its teacher on the held-out prompts, position by position of the
        # teacher's captured replies (verify/behaviour/teacher_agreement.py).
        pipeline_stage(
            name = name + "_teacher_agreement",
            tool = "//verify:check_teacher_agreement",
            mnemonic = "M8bTeacherAgreement",
            inputs = dict(checkpoint, tokenizer = tokenizer, dataset = dataset, teacher_gguf = teacher_gguf),
            outputs = {"out": pre + "teacher_agreement.json"},
            args = ["--noexit_nonzero_on_failed_gate"],
        )
        native.py_test(
            name = name + "_teacher_agreement_test",
            srcs = ["teacher_agreement_gate_test.py"],
            main = "teacher_agreement_gate_test.py",
            args = ["$(rootpath :%steacher_agreement.json)" % pre],
            data = [":" + pre + "teacher_agreement.json"],
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
        ":" + pre + "contract.json": "torchscript=-",
    }
    for _, label, backend, stage, companions in verified:
        artifacts[label] = "%s=%s" % (stage, backend)
        for companion in companions:
            artifacts[companion] = stage + "=-"
    artifacts[":" + pre + "report.json"] = "verify=-"
    if agreement:
        artifacts[":" + pre + "teacher_agreement.json"] = "teacher_agreement=self"
    artifacts[":" + pre + "report.html"] = "report=-"
    e2e_binary(name = "e2e_" + name, report = ":" + pre + "report.json", artifacts = artifacts, dist_subdir = name)
    ask_binary(name = "ask_" + name, prefix = pre, tokenizer = tokenizer, aoti = False)

def e2e_binary(name, report, artifacts, dist_subdir = ""):
    """`bazel run` target that prints a configuration's verdict table and copies its artifacts to
    dist/ (dist/<dist_subdir>/ for a named configuration): pipeline/e2e.py.

    Args:
      name: the target's name.
      report: label of the configuration's report.json.
      artifacts: {label: "stage=gate"} in table order (gate "-": not verified itself; "self": a
        gate's own result file, whose "ok" counts toward gates_ok).
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
            "//conversion:gates",
            "@pip//:absl_py",
        ],
    )

def ask_binary(name, prefix, tokenizer, aoti):
    """`bazel run` target that asks a configuration's student a question: pipeline/ask.py, pointed
    at the configuration's files (":<prefix>magic-8-ball..."; prefix "" for the default chain).

    Args:
      name: the target's name.
      prefix: the configuration's output prefix ("<name>." for a student_chain).
      tokenizer: label of the configuration's tokenizer.json.
      aoti: whether the configuration builds the AOTInductor decoder. Without it `ask` answers through
        the TorchScript decoder by default; --backend=gguf still picks llama.cpp.
    """
    files = {
        "contract": "contract.json",
        "torchscript_decoder": "magic-8-ball.decode.pt",
        "gguf": "magic-8-ball.gguf",
        "gguf_f16": "magic-8-ball.f16.gguf",
        "metadata": "student.json",
    }
    files.update({"gguf_" + variant.lower(): "magic-8-ball.%s.gguf" % variant for variant in GGUF_VARIANTS})
    if aoti:
        files["aoti_decoder"] = "magic-8-ball.decode.pt2"
    labels = {flag: ":" + prefix + path for flag, path in files.items()}
    labels["tokenizer"] = tokenizer
    native.py_binary(
        name = name,
        srcs = ["ask.py"],
        main = "ask.py",
        args = ([] if aoti else ["--backend=torchscript"]) + [
            "--%s=$(rootpath %s)" % (flag, label)
            for flag, label in sorted(labels.items())
        ],
        data = sorted(labels.values()),
        python_version = "PY3",
        deps = [
            "//common:cli",
            "//common:errors",
            "//conversion:aoti_decoder",
            "//conversion:contract",
            "//conversion:kv_decoder",
            "//conversion:pt2_archive",
            "//conversion:torchscript",
            "//conversion:torchscript_archive",
            "//data:canonical_trie",
            "//data:prompt",
            "//data:tokenizer",
            "//training:checkpoint",
            "//training:decode",
            "//training:sampling",
            "//verify:gguf_check",
            "@pip//:absl_py",
            "@pip//:numpy",
        ],
    )
