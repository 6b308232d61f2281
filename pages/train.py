"""Train: pick a backbone, a dataset and a method, start a run, watch it live."""

import json

import streamlit as st

from e2vpt import launch
from e2vpt import runs as run_store
from e2vpt.backbones import DEMO_WEIGHTS
from e2vpt.config import METHODS, TrainConfig
from e2vpt.data import list_datasets
from e2vpt.errors import ConfigError, UserError
from pages._common import current_run, run_panel, set_current_run, through_app, user_errors

through_app()

DEFAULTS = TrainConfig()
DEMO = {**DEFAULTS.to_dict(), "pretrained": DEMO_WEIGHTS.is_file()}
PAPER = {**DEFAULTS.to_dict(), "backbone": "vit_base_patch16_224.augreg_in21k", "pretrained": True,
         "prompt_len": 10, "kv_len": 5, "kv_shared": True, "mask_scope": "shared", "optimizer": "sgd",
         "lr": 0.25, "batch_size": 64, "epochs": 100, "retrain_epochs": 100, "warmup_epochs": 10.0,
         "weight_decay": 1e-4, "prune_rounds": 2, "prune_ratio": 0.5, "segment_ratio": 0.25, "segments": 16,
         "segment_layout": "interleaved", "rewind": "init", "select_round": "best", "device": "auto", "amp": True}
PRESETS = {"Demo (CPU, about a minute)": DEMO, "Paper: ViT-B/16 on a GPU": PAPER}
BACKBONES = ["demo", "vit_base_patch16_224.augreg_in21k", "vit_small_patch16_224.augreg_in21k",
             "vit_tiny_patch16_224.augreg_in21k", "vit_base_patch16_224.mae", "swin_base_patch4_window7_224.ms_in22k",
             "swin_tiny_patch4_window7_224.ms_in1k"]
DATASETS = {d["name"]: d for d in list_datasets()}
FIELDS = [f for f in DEFAULTS.to_dict() if f != "extra"]


def apply_preset() -> None:
    values = PRESETS[st.session_state["preset"]]
    dataset = st.session_state.get("cfg_dataset", values["dataset"])
    for name in FIELDS:
        st.session_state[f"cfg_{name}"] = values[name]
    st.session_state["cfg_dataset"] = dataset  # a preset sets the model and schedule, not the data
    st.session_state["cfg_lr"] = values["lr"] or 0.0
    st.session_state["cfg_retrain_epochs"] = values["retrain_epochs"] or values["epochs"]
    st.session_state["cfg_img_size"] = values["img_size"] or 0
    st.session_state["cfg_data_root"] = values["data_root"] or ""
    st.session_state["cfg_weights"] = values["weights"] or ""


if "cfg_method" not in st.session_state:
    st.session_state.setdefault("preset", next(iter(PRESETS)))
    apply_preset()

st.title("Train")
st.markdown("Tune prompts on a frozen ViT. **E2VPT** adds visual prompts and key-value prompts to every layer, "
            "then prunes the prompts that matter least, round by round. The defaults train the shipped demo ViT "
            "on handwritten digits in about a minute on a CPU; watch the loss fall and the pruning rounds below.")

st.radio("Preset", list(PRESETS), key="preset", persist_state="session", horizontal=True, on_change=apply_preset,
         help="Fills the form. The paper's setting needs a GPU and the ViT-B/16 weights from the Hugging Face hub.")
if not DEMO_WEIGHTS.is_file():
    st.caption("The shipped demo weights are not installed, so the demo trains on a randomly initialised "
               "backbone ('pretrained' is off); accuracy stays low but everything else works.")


def add_upload() -> None:
    """Extract an uploaded zip of images into a fresh folder under the data root and select it."""
    import tempfile

    from e2vpt.uploads import safe_extract_zip

    upload = st.session_state.get("upload_zip")
    if upload is None:
        return
    with tempfile.NamedTemporaryFile(suffix=".zip") as tmp:
        tmp.write(upload.getbuffer())
        tmp.flush()
        try:
            folder, skipped = safe_extract_zip(tmp.name, run_store.data_root(), name=upload.name.rsplit(".", 1)[0])
        except UserError as exc:
            st.session_state["upload_result"] = ("error", f"Not added: {exc}")
            return
    name = folder.name
    st.session_state["cfg_dataset"] = "imagefolder"
    st.session_state["cfg_data_root"] = name
    note = f" ({len(skipped)} entries skipped: not images)" if skipped else ""
    st.session_state["upload_result"] = ("success", f"Added `{name}` under the data root{note}; the form now "
                                                    "trains on it as an image folder.")


with st.expander("Your own images (a zip of class folders)"):
    st.file_uploader("Zip of `class_name/image.jpg` files (or `train|val|test/class_name/...`)", type=["zip"],
                     key="upload_zip", help="Only image files are extracted, into a new folder under the data root; "
                                            "archives with paths that climb out, links or decompression bombs are refused.")
    st.button("Add to the data folder", on_click=add_upload, icon=":material/upload:")
    if "upload_result" in st.session_state:
        kind, message = st.session_state.pop("upload_result")
        (st.success if kind == "success" else st.error)(message)

with st.form("train"):
    c1, c2, c3 = st.columns(3)
    with c1:
        st.selectbox("Backbone", BACKBONES, key="cfg_backbone", persist_state="session", accept_new_options=True,
                     help="`demo` is a small ViT that ships with the app; any timm ViT or Swin name works (type it).")
        st.checkbox("Pretrained backbone", key="cfg_pretrained", persist_state="session")
        st.selectbox("Method", METHODS, key="cfg_method", persist_state="session",
                     help="linear: head only · full: everything · vpt-shallow/deep: visual prompts · "
                          "e2vpt-noprune: visual + key-value prompts · e2vpt: the same, then pruned")
    with c2:
        st.selectbox("Dataset", list(DATASETS), key="cfg_dataset", persist_state="session",
                     format_func=lambda n: f"{n} ({DATASETS[n]['kind']})",
                     help="Built-in datasets need no files. Others read a folder under the data root.")
        folders = run_store.data_folders()
        st.text_input("Data folder (for datasets that need one)", key="cfg_data_root", persist_state="session",
                      placeholder="e.g. my-images", help=f"A folder under the data root `{run_store.data_root()}` "
                      "(set E2VPT_DATA_ROOT to change it)." + (" Found there: " + ", ".join(
                          f"`{f}`" for f in folders[:30]) if folders else " It holds no folders yet."))
        st.number_input("Epochs", min_value=0, max_value=1000, step=1, key="cfg_epochs", persist_state="session")
        st.number_input("Epochs after each pruning round", min_value=0, max_value=1000, step=1,
                        key="cfg_retrain_epochs", persist_state="session")
    with c3:
        st.number_input("Visual prompt tokens per layer (p)", min_value=0, max_value=200, step=1, key="cfg_prompt_len", persist_state="session")
        st.number_input("Key-value prompts per layer (l)", min_value=0, max_value=200, step=1, key="cfg_kv_len", persist_state="session")
        st.number_input("Pruning rounds", min_value=0, max_value=20, step=1, key="cfg_prune_rounds", persist_state="session",
                        help="Each round scores the prompts, prunes, rewinds the survivors and retrains (e2vpt only).")
        st.slider("Tokens pruned per round", 0.0, 0.95, step=0.05, key="cfg_prune_ratio", persist_state="session")
    with st.expander("More settings"):
        a, b, c = st.columns(3)
        with a:
            st.slider("Segments pruned per round", 0.0, 0.95, step=0.05, key="cfg_segment_ratio", persist_state="session")
            st.number_input("Segments per token (R)", min_value=1, max_value=256, step=1, key="cfg_segments", persist_state="session")
            st.radio("Token mask", ["layer", "shared"], key="cfg_mask_scope", persist_state="session", horizontal=True,
                     help="layer: each layer prunes its own tokens · shared: position k is pruned in every layer (paper)")
            st.radio("Segment layout", ["interleaved", "contiguous"], key="cfg_segment_layout", persist_state="session", horizontal=True)
            st.radio("Importance", ["abs", "signed"], key="cfg_importance", persist_state="session", horizontal=True)
            st.radio("Rewind survivors to", ["init", "reinit"], key="cfg_rewind", persist_state="session", horizontal=True)
            st.radio("Keep the round with", ["best", "last"], key="cfg_select_round", persist_state="session", horizontal=True,
                     format_func=lambda v: {"best": "best validation accuracy", "last": "most pruning"}[v])
        with b:
            st.radio("Optimizer", ["adamw", "sgd"], key="cfg_optimizer", persist_state="session", horizontal=True)
            st.number_input("Learning rate (0 = the method's default)", min_value=0.0, format="%g", key="cfg_lr", persist_state="session")
            st.number_input("Batch size", min_value=0, max_value=4096, step=8, key="cfg_batch_size", persist_state="session")
            st.number_input("Weight decay", min_value=0.0, format="%g", key="cfg_weight_decay", persist_state="session")
            st.number_input("Warm-up epochs", min_value=0.0, step=0.5, key="cfg_warmup_epochs", persist_state="session")
            st.number_input("Label smoothing", min_value=0.0, max_value=0.99, step=0.05, key="cfg_label_smoothing", persist_state="session")
        with c:
            st.checkbox("Key and value prompts share one tensor", key="cfg_kv_shared", persist_state="session")
            st.number_input("Prompt dropout", min_value=0.0, max_value=0.99, step=0.05, key="cfg_prompt_dropout", persist_state="session")
            st.number_input("Seed", min_value=0, step=1, key="cfg_seed", persist_state="session")
            st.selectbox("Device", ["auto", "cpu", "cuda"], key="cfg_device", persist_state="session", accept_new_options=True)
            st.checkbox("bfloat16 autocast on CUDA", key="cfg_amp", persist_state="session")
            st.checkbox("Training augmentation", key="cfg_train_augment", persist_state="session")
            st.number_input("Image size (0 = the backbone's)", min_value=0, max_value=1024, step=16, key="cfg_img_size", persist_state="session")
            st.text_input("Backbone weights (.safetensors under the data root)", key="cfg_weights", persist_state="session")
            st.radio("Head reads", ["auto", "token", "avg"], key="cfg_global_pool", persist_state="session", horizontal=True,
                     help="token: the [CLS] token · avg: the mean of the patch tokens (MAE, Swin) · "
                          "auto: what the checkpoint was made for")
    submitted = st.form_submit_button("Start training", type="primary", icon=":material/rocket_launch:")


def form_values() -> dict:
    values = {name: st.session_state[f"cfg_{name}"] for name in FIELDS}
    values["lr"] = values["lr"] or None
    values["img_size"] = values["img_size"] or None
    values["data_root"] = (values["data_root"] or "").strip() or None
    values["weights"] = (values["weights"] or "").strip() or None
    for name in ("epochs", "retrain_epochs", "prompt_len", "kv_len", "prune_rounds", "segments", "batch_size",
                 "seed", "img_size"):
        if values[name] is not None:
            values[name] = int(values[name])
    return values


if submitted:
    with user_errors("Not started: "):
        try:
            config = TrainConfig(**form_values())
        except ConfigError as exc:
            st.error(f"Not started: {exc}", icon=":material/block:")
        else:
            fingerprint = json.dumps(config.to_dict(), sort_keys=True)
            last = st.session_state.get("last_start") or {}
            previous = None
            if last.get("fingerprint") == fingerprint:
                try:
                    previous = run_store.open_run(last["run_id"])
                except Exception:
                    previous = None
            if previous is not None and launch.is_active(previous):
                st.session_state["flash"] = ("warning", f"This run is already training as `{previous.id}`; it was "
                                             "not started twice. Change a setting to train another run alongside "
                                             "it, or cancel it first.")
                set_current_run(previous.id)
            else:
                run_id = run_store.new_run_id(config)
                st.session_state["last_start"] = {"fingerprint": fingerprint, "run_id": run_id}
                run = launch.start_run(config, run_id=run_id)
                set_current_run(run.id)
                st.session_state["flash"] = ("success", f"Started `{run.id}`. It trains in its own process: you "
                                             "can leave this page, refresh it or open another run meanwhile.")
            st.rerun()  # the sidebar picks up the new current run

if "flash" in st.session_state:
    kind, message = st.session_state.pop("flash")
    (st.success if kind == "success" else st.warning)(message, icon=":material/rocket_launch:" if kind == "success" else ":material/back_hand:")

run = current_run(required=False)
if run is not None:
    st.subheader(f"Run `{run.id}`")
    run_panel(run.id, key="train")
