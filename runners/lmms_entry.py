"""Entry-point payloads for the `lmms_eval.models` group (pyproject.toml), one per backbone family.

Kept free of module-level lmms-eval imports: lmms-eval resolves entry points while
`lmms_eval.models` is being imported, so each payload is a callable that builds its manifest then.
"""


def _manifest(model_id: str, cls: str):
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=model_id, simple_class_path=f"runners.lmms_models.{cls}")


def qwen2_5_vl():
    return _manifest("ottvid_qwen2_5_vl", "OttvidQwen25VL")


def llava_onevision():
    return _manifest("ottvid_llava_onevision", "OttvidLlavaOnevision")


def llava_video():
    return _manifest("ottvid_llava_video", "OttvidLlavaVideo")
