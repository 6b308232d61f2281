"""Train: pick a backbone, a dataset and a method, start a run, watch it live."""

import json

import streamlit as st

from e2vpt import launch
from e2vpt import runs as run_store
from e2vpt.config import SUGGESTED_BACKBONES, TrainConfig, flag, in_form_words
from e2vpt.config import kind as setting_kind
from e2vpt.config import meta, preset, settings, used_by
from e2vpt.data import list_datasets
from e2vpt.errors import ConfigError, UserError
from e2vpt.models.backbones import DEMO_WEIGHTS
from e2vpt.recipes import RECIPES
from e2vpt.runs import ACTIVE_STATES
from e2vpt.training.estimates import run_seconds
from ui.current_run import current_run, set_current_run
from ui.errors import user_errors
from ui.formats import about
from ui.run_panel import run_panel

PRESET_LABELS = {"Demo (CPU)": "demo", "Paper: ViT-B/16 on a GPU": "paper",
                 "Official code: ViT-B/16 on a GPU": "official"}
DATASETS = {d["name"]: d for d in list_datasets()}
# Where each group of settings sits: the three columns at the top, then the three under "More settings".
MAIN_COLUMNS = {"model": 0, "data": 1, "optimisation": 1, "prompts": 2, "pruning": 2, "run": 2}
MORE_COLUMNS = {"pruning": 0, "optimisation": 1, "model": 2, "prompts": 2, "data": 2, "run": 2}


def to_widget(f, value):
    """A setting's value as its widget holds it: an unset optional text is '' (an unset number stays empty)."""
    if value is None and setting_kind(f)[0] is str:
        return ""
    return value


def from_widget(f, value):
    """The widget's value as a setting (an empty optional box is unset)."""
    base, _, optional = setting_kind(f)
    if base is str and isinstance(value, str):
        value = value.strip()
    if optional and value == "":
        return None
    return int(value) if base is int and isinstance(value, float) and value.is_integer() else value


def apply_preset() -> None:
    values = preset(PRESET_LABELS[st.session_state["preset"]]).to_dict()
    if PRESET_LABELS[st.session_state["preset"]] == "demo":
        values["pretrained"] = DEMO_WEIGHTS.is_file()
    dataset = st.session_state.get("cfg_dataset", values["dataset"])
    for f in settings():
        st.session_state[f"cfg_{f.name}"] = to_widget(f, values[f.name])
    st.session_state["cfg_dataset"] = dataset  # a preset sets the model and schedule, not the data


def apply_recipe() -> None:
    """Set every choice the picked recipe makes (the form's other settings stay as they are); what the
    preset sets itself (e.g. the ViT-B presets' SGD schedule) stays the preset's."""
    values = preset(PRESET_LABELS[st.session_state["preset"]], recipe=st.session_state["cfg_recipe"]).to_dict()
    fields = {f.name: f for f in settings()}
    for name in set().union(*RECIPES.values()):
        st.session_state[f"cfg_{name}"] = to_widget(fields[name], values[name])


def setting_widget(f) -> None:
    """The widget of one setting, chosen from its declaration (`e2vpt.config.setting`)."""
    m, (base, choices, optional) = meta(f), setting_kind(f)
    key, label, help = f"cfg_{f.name}", m["label"], m["help"]
    common = dict(key=key, help=help, persist_state="session")
    if f.name == "backbone":
        st.selectbox(label, SUGGESTED_BACKBONES, accept_new_options=True, **common)
    elif f.name == "dataset":
        st.selectbox(label, list(DATASETS), format_func=lambda n: f"{n} ({DATASETS[n]['label']})", **common)
    elif f.name == "device":
        st.selectbox(label, ["auto", "cpu", "cuda"], accept_new_options=True, **common)
    elif f.name == "data_root":
        folders = run_store.data_folders()
        where = (f" A folder under the data root `{run_store.data_root()}` (set E2VPT_DATA_ROOT to change it)."
                 + (" Found there: " + ", ".join(f"`{x}`" for x in folders[:30]) if folders else " It holds no folders yet."))
        st.text_input(label, placeholder="e.g. my-images", **{**common, "help": help + where})
    elif base is bool:
        st.checkbox(label, **common)
    elif choices:
        words = lambda v: m["choice_labels"].get(v, v)  # noqa: E731
        if m["widget"] == "select" or len(choices) > 3:
            st.selectbox(label, choices, format_func=words, **common)
        else:
            st.radio(label, choices, format_func=words, horizontal=True, **common)
    elif base is str:
        st.text_input(label, placeholder=f"empty: {m['none_means']}" if optional else None, **common)
    else:
        low = m["ge"] if m["ge"] is not None else m["gt"]
        high = m["form_max"] if m["lt"] is not None else m["le"]
        if base is float:
            low, high = (None if low is None else float(low)), (None if high is None else float(high))
        step = m["step"] or (1 if base is int else None)
        if m["widget"] == "slider":
            st.slider(label, low, high, step=step, **common)
        else:
            unset = dict(placeholder=f"empty: {m['none_means']}") if optional else {}  # empty = unset
            st.number_input(label, min_value=low, max_value=high, step=step, format=None if base is int else "%g",
                            **unset, **common)


ABOVE_THE_FORM = ("recipe", "method")  # they change what the form holds: a change reruns the page at once


def settings_columns(basic: bool, placement: dict) -> None:
    """The settings the chosen method reads, in three columns (the others keep their values, hidden)."""
    columns = st.columns(3)
    method = st.session_state["cfg_method"]
    for f in settings():
        if meta(f)["basic"] == basic and f.name not in ABOVE_THE_FORM and used_by(f, method):
            with columns[placement[meta(f)["group"]]]:
                setting_widget(f)


if "cfg_method" not in st.session_state:
    st.session_state.setdefault("preset", next(iter(PRESET_LABELS)))
    apply_preset()

st.title("Train")
st.markdown("Tune prompts on a frozen ViT. **E2VPT** adds visual prompts and key-value prompts to every layer, "
            "then prunes the prompts that matter least, round by round. The defaults train the shipped demo ViT "
            "on handwritten digits on a CPU (about 80 s on 2 idle cores; the estimate under the form is measured on "
            "this machine); watch the loss fall and the pruning rounds below.")

def show_current_run() -> None:
    """The message of the last Start, then the current run: progress, curves, Cancel or Resume."""
    if "flash" in st.session_state:
        kind, message = st.session_state.pop("flash")
        (st.success if kind == "success" else st.warning)(
            message, icon=":material/rocket_launch:" if kind == "success" else ":material/back_hand:")
    if current is not None:
        st.subheader(f"Run `{current.id}`")
        run_panel(current.id, key="train")


# a run that is training, or that this session started, comes first (right after Start it is what the
# user wants to see, and its result must not drop below the form when it ends); the form for the next
# run follows. Otherwise the form comes first and the last run under it.
current = current_run(required=False)
started_here = current is not None and (st.session_state.get("last_start") or {}).get("run_id") == current.id
training_now = current is not None and (started_here or current.status().get("state") in ACTIVE_STATES)
if training_now:
    show_current_run()
    st.divider()
    st.subheader("Start another run")

st.radio("Preset", list(PRESET_LABELS), key="preset", persist_state="session", horizontal=True, on_change=apply_preset,
         help="Fills the form. The paper's setting needs a GPU and the ViT-B/16 weights from the Hugging Face hub.")
recipe = next(f for f in settings() if f.name == "recipe")
st.radio(meta(recipe)["label"], setting_kind(recipe)[1], key="cfg_recipe", persist_state="session", horizontal=True,
         format_func=lambda v: meta(recipe)["choice_labels"].get(v, v), on_change=apply_recipe,
         help="Sets the method's choices below (mask scope, importance, rewinding, pruned tokens, trained masks, "
              "shared key-value prompts, prompt dropout); docs/RECIPES.md says where each comes from. You can "
              "still change any of them.")
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

setting_widget(next(f for f in settings() if f.name == "method"))
unused = [meta(f)["label"] for f in settings() if not used_by(f, st.session_state["cfg_method"])]
if unused:
    st.caption(f"{st.session_state['cfg_method']} does not use {len(unused)} settings (e.g. "
               f"{', '.join(unused[:3]).lower()}): they are hidden below.")

with st.form("train"):
    settings_columns(basic=True, placement=MAIN_COLUMNS)
    with st.expander("More settings"):
        settings_columns(basic=False, placement=MORE_COLUMNS)
    submitted = st.form_submit_button("Start training", type="primary", icon=":material/rocket_launch:")


def setting_error(error: ConfigError) -> str:
    """A settings error with the field named by its label in this form, not by its CLI flag."""
    named = {f.name: f for f in settings()}.get(error.setting)
    message = str(error)
    if named is not None:
        message = message.replace(f"{named.name} ({flag(named)})", f"“{meta(named)['label']}”").replace(
            f"use e.g. {flag(named)}", "e.g.")
    return in_form_words(message)


def form_values() -> dict:
    return {f.name: from_widget(f, st.session_state[f"cfg_{f.name}"]) for f in settings()}


def start(config: TrainConfig, fingerprint: str) -> None:
    """Start the run (once: pressing Start again while the same run trains does not start a twin);
    `fingerprint` is the settings as JSON, which tells a second press of the same run."""
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


try:
    guess = run_seconds(TrainConfig.from_dict(form_values()), run_store.list_runs())
    st.caption(f"Expected: {about(guess['seconds'])} ({guess['basis']})." if guess["seconds"] is not None else
               f"No estimate yet: {guess['basis']}.")
except UserError:
    pass  # the form's settings are not valid yet: Start says why

if submitted:
    with user_errors("Not started: "):
        try:
            config = TrainConfig.from_dict(form_values())
        except ConfigError as exc:
            st.error(f"Not started: {setting_error(exc)}", icon=":material/block:")
        else:
            fingerprint = json.dumps(config.to_dict(), sort_keys=True)
            warnings = launch.start_warnings(config)
            if warnings and st.session_state.get("warned_for") != fingerprint:
                st.session_state["warned_for"] = fingerprint  # the same settings again: started as asked
                st.warning("Not started yet: " + " ".join(warnings) + " Press **Start training** again to start it "
                           "anyway, or change the settings.", icon=":material/warning:")
            else:
                start(config, fingerprint)

if not training_now:
    show_current_run()
