"""asfda.set_log_callback: the decisions the library makes on its own reach Python (a callback,
or by default the logging module's "asfda" logger), filtered by level, from any thread; a
callback's exception goes to sys.unraisablehook; None turns logging off. The scenario is device
"auto" on the CPU ONNX Runtime of the tests, which falls back to the CPU (or, where the OpenVINO
plugin offers a device, runs on OpenVINO): either way it logs its choice and why not CUDA."""
import logging
import sys
import threading

import pytest

import asfda
from synthetic_data import BUNDLE, ROOT

TINY = ROOT / "models" / "tiny_conv3d" / "tiny_conv3d.onnx"
FALLBACK = "device 'auto' "  # "... falls back to the CPU: ..." or "... runs on openvino (CUDA: ...)"


def auto_device():
    return "openvino" if asfda.runtime_info()["openvino"]["usable"] else "cpu"


@pytest.fixture(autouse=True)
def logging_off_after():
    yield
    asfda.set_log_callback(None)


def auto_model():
    return asfda.Model(TINY, device="auto", threads=1)


def test_engine_on_auto_reports_the_cpu_fallback():
    seen = []
    asfda.set_log_callback(lambda level, message: seen.append((level, message)))
    assert asfda.Engine(BUNDLE, device="auto", threads=1).device == auto_device()
    fallbacks = [(level, m) for level, m in seen if FALLBACK in m]
    assert fallbacks, seen
    level, message = fallbacks[0]
    assert level is asfda.LogLevel.INFO
    assert "libonnxruntime_providers_cuda.so" in message


def test_default_routes_to_the_logging_module(caplog):
    asfda.set_log_callback()
    with caplog.at_level(logging.INFO, logger="asfda"):
        auto_model()
    records = [r for r in caplog.records if r.name == "asfda" and FALLBACK in r.getMessage()]
    assert records and records[0].levelno == logging.INFO


def test_max_level_filters_and_none_turns_off():
    seen = []
    asfda.set_log_callback(lambda level, message: seen.append(message), max_level="warn")
    auto_model()
    assert not [m for m in seen if FALLBACK in m]
    asfda.set_log_callback(lambda level, message: seen.append(message), max_level=asfda.LogLevel.INFO)
    auto_model()
    assert [m for m in seen if FALLBACK in m]
    asfda.set_log_callback(None)
    seen.clear()
    auto_model()
    assert seen == []


def test_bad_levels_are_refused():
    with pytest.raises(asfda.InvalidArgumentError, match="max_level"):
        asfda.set_log_callback(print, max_level=9)
    with pytest.raises(ValueError, match="unknown log level"):
        asfda.set_log_callback(print, max_level="verbose")


def test_callback_runs_on_the_deciding_thread():
    threads = []
    asfda.set_log_callback(lambda level, message: threads.append(threading.get_ident()) if FALLBACK in message else None)
    worker = threading.Thread(target=auto_model)
    worker.start()
    worker.join()
    assert threads == [worker.ident]


def test_callback_exception_goes_to_unraisablehook(monkeypatch):
    raised = []
    monkeypatch.setattr(sys, "unraisablehook", raised.append)

    def boom(level, message):
        raise RuntimeError("from the callback")

    asfda.set_log_callback(boom)
    assert auto_model().device == auto_device()  # the call itself is unaffected
    assert raised and isinstance(raised[0].exc_value, RuntimeError)
