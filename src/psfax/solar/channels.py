"""AIA EUV channels and their filter-mesh geometry (Grigis et al. 2012, Table 2).

The numbers are the published characterisation of the entrance and
focal-plane filter meshes of the seven EUV telescopes: the four arm angles
of the entrance mesh (degrees), the spacing in pixels between successive
diffraction spikes of the entrance and the focal-plane meshes, the mesh pitch
and wire width (micrometres), and the Gaussian width parameter ``w`` of each
spike, ``exp(-w r^2)`` with ``r`` in pixels (4.5 in flight; pre-flight values
are the laboratory cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psfax.errors import InputError

EUV_CHANNELS = (94, 131, 171, 193, 211, 304, 335)


@dataclass(frozen=True)
class MeshGeometry:
    """Filter-mesh description of one channel (angles in degrees, spacings in pixels)."""

    channel: int
    entrance_angles_deg: tuple[float, float, float, float]
    entrance_spacing_px: float
    focal_plane_spacing_px: float
    preflight_width: float
    flight_width: float = 4.5
    mesh_pitch_um: float = 363.0
    mesh_wire_um: float = 34.0

    def width(self, use_preflightcore: bool) -> float:
        """Gaussian width ``w`` of ``exp(-w r^2)`` in 1/px^2."""
        return self.preflight_width if use_preflightcore else self.flight_width

    @property
    def mesh_ratio(self) -> float:
        """Pitch over wire width: spike ``m`` has intensity ``sinc^2(m / mesh_ratio)``."""
        return self.mesh_pitch_um / self.mesh_wire_um


_GEOMETRY = {
    94: MeshGeometry(94, (49.81, 40.16, -40.28, -49.92), 8.99, 0.207, 0.951),
    131: MeshGeometry(131, (50.27, 40.17, -39.70, -49.95), 12.37, 0.289, 1.033),
    171: MeshGeometry(171, (49.81, 39.57, -40.13, -50.38), 16.26, 0.377, 0.962),
    193: MeshGeometry(193, (49.82, 39.57, -40.12, -50.37), 18.39, 0.425, 1.512),
    211: MeshGeometry(211, (49.78, 40.08, -40.34, -49.95), 19.97, 0.465, 1.199),
    304: MeshGeometry(304, (49.76, 40.18, -40.14, -49.90), 28.87, 0.670, 1.247),
    335: MeshGeometry(335, (50.40, 39.80, -39.64, -50.25), 31.83, 0.738, 0.962),
}


def validate_channel(channel) -> int:
    """Return the channel as an int (Angstrom); accepts an int, a float or an astropy Quantity."""
    value = channel
    if hasattr(channel, "to_value"):
        try:
            value = channel.to_value("angstrom")
        except Exception:  # noqa: BLE001 - any unit error becomes one message
            raise InputError(f"channel must be a wavelength, got {channel!r}") from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"channel must be one of {EUV_CHANNELS} (Angstrom), got {channel!r}") from None
    if not np.isfinite(number) or round(number) not in _GEOMETRY or abs(number - round(number)) > 1e-6:
        raise InputError(f"channel must be one of {EUV_CHANNELS} (Angstrom), got {channel!r}")
    return int(round(number))


def mesh_geometry(channel) -> MeshGeometry:
    """Filter-mesh geometry of an EUV channel (94, 131, 171, 193, 211, 304, 335)."""
    return _GEOMETRY[validate_channel(channel)]
