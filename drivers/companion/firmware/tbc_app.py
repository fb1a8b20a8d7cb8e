# Companion board firmware: light tower, help button, sensor and drawer pulse for a
# self-checkout lane, driven by the tillbox host over USB CDC serial (see tbc_proto).
#
# Tasks (asyncio): the host link (5 ms poll), inputs (5 ms sampling, debounced), lights
# (20 ms pattern updates plus the heartbeat watchdog), pulses (one task per pulse), and on
# the simulator the control link. When no valid host frame arrives within the heartbeat
# timeout the tower shows tbc_config.FALLBACK ("help needed") until the host is heard again.

import asyncio
import sys
import time

import tbc_config
import tbc_hal
import tbc_proto as proto

FIRMWARE = "tbc 1.0.0"
FULL = 65535
REBASE_MS = 3600000  # move the pattern origin forward hourly, by whole minutes


def pattern_duty(pattern, period, elapsed):
    """Duty 0..65535 of a light ``elapsed`` ms into its pattern."""
    if pattern == proto.P_STEADY:
        return FULL
    if pattern == proto.P_BLINK:
        return FULL if elapsed % period < period // 2 else 0
    if pattern == proto.P_PULSE:
        half = period // 2
        phase = elapsed % period
        level = (phase if phase < half else period - phase) * 255 // half
        return level * level * FULL // 65025
    return 0


class Debounced:
    """An input that changes state only after the raw level held for ``debounce_ms``."""

    def __init__(self, pin, debounce_ms, now):
        self.pin = pin
        self.debounce_ms = debounce_ms
        self.stable = pin.active()
        self.candidate = self.stable
        self.since = now
        self.count = 0

    def sample(self, now):
        """True when the debounced state changed; activations bump ``count`` (mod 256)."""
        raw = self.pin.active()
        if raw != self.candidate:
            self.candidate = raw
            self.since = now
            return False
        if raw != self.stable and time.ticks_diff(now, self.since) >= self.debounce_ms:
            self.stable = raw
            if raw:
                self.count = (self.count + 1) & 0xFF
            return True
        return False


class Companion:
    def __init__(self, hal, config, boot_heartbeat_ms):
        self.hal = hal
        self.config = config
        now = time.ticks_ms()
        self.off = [(proto.P_OFF, 0)] * len(hal.lights)
        self.host_lights = self.off
        self.shown = self.off
        self.t0 = now
        self.timeout_ms = boot_heartbeat_ms
        self.last_heard = now
        self.fallback = False
        self.fell_back = False
        self.decoder = proto.Decoder()
        self.ctl_decoder = proto.Decoder()
        self.inputs = [Debounced(pin, spec[2], now) for pin, spec in zip(hal.inputs, config.INPUTS)]
        self.pulsing = [False] * len(hal.outputs)
        self.seq = 0
        self.stop = asyncio.Event()

    # -- output helpers --------------------------------------------------------------------------

    def send(self, kind, payload=b"", seq=None):
        if seq is None:
            seq = self.seq
            self.seq = (self.seq + 1) & 0xFF
        self.hal.link.write(proto.encode(kind, seq, payload))

    def show(self, lights, now):
        if lights != self.shown:
            self.shown = lights
            self.t0 = now
            self.update_lights(now)

    def set_led(self, on):
        if self.hal.led is not None:
            self.hal.led.set(on)

    def update_lights(self, now):
        elapsed = time.ticks_diff(now, self.t0)
        if elapsed >= REBASE_MS:
            self.t0 = time.ticks_add(self.t0, elapsed - elapsed % 60000)
            elapsed = time.ticks_diff(now, self.t0)
        for light, (pattern, period) in zip(self.hal.lights, self.shown):
            light.duty(pattern_duty(pattern, period, elapsed))

    def watchdog(self, now):
        if not self.fallback and time.ticks_diff(now, self.last_heard) > self.timeout_ms:
            self.fallback = True
            self.fell_back = True
            fallback = [tuple(x) for x in self.config.FALLBACK]
            self.show((fallback + self.off)[: len(self.off)], now)
            self.set_led(False)

    def heard(self, now):
        self.last_heard = now
        if self.fallback:
            self.fallback = False
            self.show(self.host_lights, now)
        self.set_led(True)

    # -- host frames -----------------------------------------------------------------------------

    def on_host(self, kind, seq, payload, now):
        self.heard(now)
        try:
            if kind == proto.HEARTBEAT:
                self.send(proto.STATUS, self.status(), seq)
            elif kind == proto.SET_LIGHTS:
                self.set_lights(proto.unpack_lights(payload), seq, now)
            elif kind == proto.PULSE:
                self.pulse(proto.unpack_pulse(payload), seq)
            elif kind == proto.HELLO:
                self.hello(proto.unpack_hello(payload), seq)
            else:
                self.send(proto.NAK, proto.pack_nak(proto.E_UNKNOWN), seq)
        except ValueError:
            self.send(proto.NAK, proto.pack_nak(proto.E_PAYLOAD), seq)

    def status(self):
        flags = proto.F_FELL_BACK if self.fell_back else 0
        self.fell_back = False
        return proto.pack_status(flags, [i.stable for i in self.inputs], [i.count for i in self.inputs])

    def hello(self, request, seq):
        lo, hi, heartbeat_ms = request
        if not lo <= proto.VERSION <= hi:
            self.send(proto.NAK, proto.pack_nak(proto.E_VERSION, proto.VERSION), seq)
            return
        self.timeout_ms = min(max(heartbeat_ms, proto.MIN_HEARTBEAT_MS), proto.MAX_HEARTBEAT_MS)
        hal = self.hal
        welcome = proto.pack_welcome(
            proto.VERSION, len(hal.lights), len(hal.outputs), len(hal.inputs), self.timeout_ms, FIRMWARE
        )
        self.send(proto.WELCOME, welcome, seq)

    def set_lights(self, lights, seq, now):
        if len(lights) > len(self.off):
            self.send(proto.NAK, proto.pack_nak(proto.E_RANGE), seq)
            return
        for pattern, period in lights:
            error = proto.light_error(pattern, period)
            if error:
                self.send(proto.NAK, proto.pack_nak(error), seq)
                return
        self.host_lights = (lights + self.off)[: len(self.off)]
        if not self.fallback:
            self.show(self.host_lights, now)
        self.send(proto.ACK, b"", seq)

    def pulse(self, request, seq):
        index, duration_ms = request
        if index >= len(self.hal.outputs) or not proto.MIN_PULSE_MS <= duration_ms <= proto.MAX_PULSE_MS:
            self.send(proto.NAK, proto.pack_nak(proto.E_RANGE), seq)
        elif self.pulsing[index]:
            self.send(proto.NAK, proto.pack_nak(proto.E_BUSY), seq)
        else:
            self.pulsing[index] = True
            asyncio.create_task(self.run_pulse(index, duration_ms))
            self.send(proto.ACK, b"", seq)

    async def run_pulse(self, index, duration_ms):
        out = self.hal.outputs[index]
        out.set(True)
        try:
            await asyncio.sleep_ms(duration_ms)
        finally:
            out.set(False)
            self.pulsing[index] = False

    # -- simulator control frames ----------------------------------------------------------------

    def on_ctl(self, kind, seq, payload):
        hal = self.hal
        reply = proto.ACK
        body = b""
        if kind == proto.SIM_INPUT and len(payload) == 2 and payload[0] < len(hal.inputs):
            hal.inputs[payload[0]].level = payload[1] == 1
        elif kind == proto.SIM_PEEK:
            reply = proto.SIM_STATE
            lights = [(light.value, light.toggles) for light in hal.lights]
            outputs = [(out.level, out.pulses, out.last_ms) for out in hal.outputs]
            body = proto.pack_sim_state(self.fallback, self.decoder.dropped, lights, outputs)
        elif kind == proto.SIM_EMIT:
            hal.link.write(payload)
        else:
            reply = proto.NAK
            body = proto.pack_nak(proto.E_UNKNOWN)
        hal.ctl.write(proto.encode(reply, seq, body))

    # -- tasks -----------------------------------------------------------------------------------

    async def link_task(self):
        while True:
            data = self.hal.link.read()
            if data:
                now = time.ticks_ms()
                for kind, seq, payload in self.decoder.feed(data):
                    self.on_host(kind, seq, payload, now)
            await asyncio.sleep_ms(5)

    async def input_task(self):
        while True:
            now = time.ticks_ms()
            for index, inp in enumerate(self.inputs):
                if inp.sample(now):
                    self.send(proto.EVENT, proto.pack_event(index, inp.stable, inp.count))
            await asyncio.sleep_ms(5)

    async def light_task(self):
        while True:
            now = time.ticks_ms()
            self.watchdog(now)
            self.update_lights(now)
            await asyncio.sleep_ms(20)

    async def ctl_task(self):
        ctl = self.hal.ctl
        while not ctl.eof:
            for kind, seq, payload in self.ctl_decoder.feed(ctl.read()):
                self.on_ctl(kind, seq, payload)
            await asyncio.sleep_ms(5)
        self.stop.set()

    async def run(self):
        self.update_lights(time.ticks_ms())
        self.send(proto.BOOT, proto.pack_boot(proto.VERSION, FIRMWARE))
        asyncio.create_task(self.link_task())
        asyncio.create_task(self.input_task())
        asyncio.create_task(self.light_task())
        if self.hal.ctl is not None:
            asyncio.create_task(self.ctl_task())
        await self.stop.wait()


def parse_args(argv):
    """``--sim FD`` (control link fd) and ``--boot-heartbeat MS`` (unix port only)."""
    ctl_fd = None
    boot_ms = tbc_config.BOOT_HEARTBEAT_MS
    i = 0
    while i + 1 < len(argv):
        if argv[i] == "--sim":
            ctl_fd = int(argv[i + 1])
        elif argv[i] == "--boot-heartbeat":
            boot_ms = int(argv[i + 1])
        i += 2
    return ctl_fd, boot_ms


def main():
    ctl_fd, boot_ms = parse_args(sys.argv[1:])
    hal = tbc_hal.Hal(tbc_config, ctl_fd)
    try:
        asyncio.run(Companion(hal, tbc_config, boot_ms).run())
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if hal.sim:
            raise
        sys.print_exception(exc)
        time.sleep(2)
        hal.reset()
