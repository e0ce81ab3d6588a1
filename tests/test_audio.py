from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import torch

from vaelab.audio import midi_frequency, piano_roll_wav, synthesize, wav_bytes
from vaelab.data import NOTE_MIN, NUM_NOTES


def _roll(steps: int, notes: list[int]) -> torch.Tensor:
    roll = torch.zeros(steps, NUM_NOTES)
    for n in notes:
        roll[:, n - NOTE_MIN] = 1.0
    return roll


def test_midi_frequencies():
    np.testing.assert_allclose(midi_frequency(69), 440.0)
    np.testing.assert_allclose(midi_frequency(81), 880.0)  # an octave doubles
    np.testing.assert_allclose(midi_frequency(60), 261.6256, rtol=1e-6)  # middle C


def test_wav_header_and_length():
    sample_rate, step_seconds, steps = 8000, 0.1, 12
    data = piano_roll_wav(_roll(steps, [60]), step_seconds, sample_rate)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, sample_rate)
        assert f.getnframes() == steps * round(step_seconds * sample_rate)
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    assert np.abs(pcm).max() > 30000  # a single note at full scale, never clipped past 32767


@pytest.mark.parametrize("note", [57, 69, 76])
def test_spectrum_peaks_at_the_note(note):
    sample_rate = 16000
    signal = synthesize(_roll(16, [note]), 0.25, sample_rate)  # 4 s of one held note
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    freqs = np.fft.rfftfreq(len(signal), 1 / sample_rate)
    resolution = freqs[1]  # 0.25 Hz bins
    assert abs(freqs[spectrum.argmax()] - midi_frequency(note)) <= resolution


def test_chord_has_a_peak_per_note_and_silence_is_silent():
    sample_rate = 16000
    roll = _roll(8, [60, 64, 67])
    roll[4:] = 0  # second half silent
    signal = synthesize(roll, 0.25, sample_rate)
    half = len(signal) // 2
    assert np.all(signal[half:] == 0)
    first = signal[:half]
    spectrum = np.abs(np.fft.rfft(first))
    freqs = np.fft.rfftfreq(len(first), 1 / sample_rate)
    top = sorted(freqs[np.argsort(spectrum)[-60:]])  # the strongest bins
    for note in (60, 64, 67):
        assert min(abs(f - midi_frequency(note)) for f in top) <= freqs[1]
    assert np.abs(signal).max() <= 1.0


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[T, P\]"):
        synthesize(torch.zeros(2, 3, 88))
    with pytest.raises(ValueError, match="step_seconds"):
        synthesize(torch.zeros(3, 88), step_seconds=0)
    with pytest.raises(ValueError, match=r"\[N\]"):
        wav_bytes(np.zeros((2, 2)))
