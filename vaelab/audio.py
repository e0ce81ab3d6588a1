"""Listen to a piano roll: a sum of sines at the notes' MIDI frequencies, as WAV bytes.

Deliberately simple synthesis for the dashboard (``st.audio``): each active note of a time
step sounds a sine at its equal-tempered frequency f = 440 * 2 ** ((n - 69) / 12) (MIDI note
69 is A4 = 440 Hz), shaped by a short linear attack and release so steps do not click. NumPy
and the standard ``wave`` module only.
"""

from __future__ import annotations

import io
import wave

import numpy as np
from torch import Tensor

from vaelab.data import NOTE_MIN


def midi_frequency(note: int | np.ndarray) -> np.ndarray:
    """Returns the equal-tempered frequency in Hz of MIDI note(s) ``note`` (69 = A4 = 440)."""
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


def synthesize(
    roll: Tensor | np.ndarray,
    step_seconds: float = 0.25,
    sample_rate: int = 22050,
    note_min: int = NOTE_MIN,
    fade_seconds: float = 0.01,
) -> np.ndarray:
    """Returns the waveform ``[T * round(step_seconds * sample_rate)]`` (float64 in [-1, 1])
    of a binary piano roll ``roll [T, P]`` whose column ``j`` is MIDI note ``note_min + j``.

    Every time step lasts ``step_seconds``; a note on at a step sounds a sine (phase running
    on across steps, so held notes are continuous) times an envelope with ``fade_seconds``
    linear attack and release; the sum is scaled by the largest number of simultaneous notes.
    Values > 0.5 count as on (pass ``torch.bernoulli(p)`` for note probabilities).
    """
    notes = np.asarray(roll.detach().cpu() if isinstance(roll, Tensor) else roll) > 0.5
    if notes.ndim != 2:
        raise ValueError(
            f"roll must be [T, P], got shape {list(notes.shape)}; take one "
            f"sequence of a [B, T, P] batch"
        )
    if step_seconds <= 0 or sample_rate < 1000 or fade_seconds < 0:
        raise ValueError(
            f"need step_seconds > 0, sample_rate >= 1000 and fade_seconds >= 0, "
            f"got {step_seconds}, {sample_rate}, {fade_seconds}"
        )
    steps, pitches = notes.shape
    n = round(step_seconds * sample_rate)  # samples per step
    fade = min(round(fade_seconds * sample_rate), n // 2)
    envelope = np.ones(n)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
        envelope[:fade], envelope[n - fade :] = ramp, ramp[::-1]
    t = np.arange(steps * n) / sample_rate  # [T * n] seconds
    out = np.zeros(steps * n)
    freqs = midi_frequency(note_min + np.arange(pitches))
    for j in np.flatnonzero(notes.any(axis=0)):  # only notes that ever sound
        on = np.repeat(notes[:, j], n) * np.tile(envelope, steps)  # [T * n]
        out += on * np.sin(2 * np.pi * freqs[j] * t)
    loudest = max(int(notes.sum(axis=1).max(initial=0)), 1)
    return out / loudest


def wav_bytes(signal: np.ndarray, sample_rate: int = 22050) -> bytes:
    """Returns a mono 16-bit PCM WAV file holding ``signal [N]`` (values clipped to [-1, 1])."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError(f"signal must be [N], got shape {list(signal.shape)}")
    pcm = np.round(np.clip(signal, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return buffer.getvalue()


def piano_roll_wav(
    roll: Tensor | np.ndarray,
    step_seconds: float = 0.25,
    sample_rate: int = 22050,
    note_min: int = NOTE_MIN,
) -> bytes:
    """Returns the WAV bytes of :func:`synthesize` for ``roll [T, P]`` (for ``st.audio``)."""
    return wav_bytes(synthesize(roll, step_seconds, sample_rate, note_min), sample_rate)
