# Hardware seam of the companion firmware (MicroPython).
#
# The application sees light channels (duty 0..65535), pulse outputs (on/off), inputs
# (active or not) and byte links. On the board they are machine.PWM / machine.Pin and
# USB CDC stdio; on the unix port (no machine.Pin) the pins are simulated and a second
# link, the control link on an inherited file descriptor, lets a test drive inputs and
# read outputs. The host link is stdio in both cases.

import select
import sys
import time

try:
    import machine
except ImportError:
    machine = None

FULL = 65535


def has_pins():
    return machine is not None and hasattr(machine, "Pin")


# -- board ---------------------------------------------------------------------------------------


class PwmOut:
    """A light channel on a PWM pin."""

    def __init__(self, gpio, active_high, freq):
        self._pwm = machine.PWM(machine.Pin(gpio, machine.Pin.OUT))
        self._pwm.freq(freq)
        self._invert = not active_high
        self.duty(0)

    def duty(self, value):
        self._pwm.duty_u16(FULL - value if self._invert else value)


class PinOut:
    """A plain on/off output."""

    def __init__(self, gpio, active_high):
        self._active_high = active_high
        self._pin = machine.Pin(gpio, machine.Pin.OUT, value=0 if active_high else 1)

    def set(self, on):
        self._pin.value(1 if on == self._active_high else 0)


class PinIn:
    """A switch input; active-low inputs use the internal pull-up."""

    def __init__(self, gpio, active_low):
        self._active_low = active_low
        pull = machine.Pin.PULL_UP if active_low else machine.Pin.PULL_DOWN
        self._pin = machine.Pin(gpio, machine.Pin.IN, pull)

    def active(self):
        return self._pin.value() == (0 if self._active_low else 1)


# -- simulated pins ------------------------------------------------------------------------------


class SimPwm:
    """Keeps the duty and counts on/off transitions."""

    def __init__(self):
        self.value = 0
        self.toggles = 0

    def duty(self, value):
        if (value > 0) != (self.value > 0):
            self.toggles += 1
        self.value = value


class SimOut:
    """Keeps the level, the number of pulses and the length of the last one."""

    def __init__(self):
        self.level = 0
        self.pulses = 0
        self.last_ms = 0
        self._since = 0

    def set(self, on):
        now = time.ticks_ms()
        if on and not self.level:
            self.pulses += 1
            self._since = now
        elif self.level and not on:
            self.last_ms = time.ticks_diff(now, self._since)
        self.level = 1 if on else 0


class SimIn:
    """An input whose level the control link sets."""

    def __init__(self):
        self.level = False

    def active(self):
        return self.level


# -- links ---------------------------------------------------------------------------------------


class StreamLink:
    """Non-blocking reads and writes on a stream. ``eof`` turns true when the peer closed
    (never for USB CDC; used for the simulator's control link). With ``guard_writes`` a write
    the peer cannot take now is dropped instead of blocking (a pty nobody reads)."""

    def __init__(self, rx, tx, rx_poll=None, guard_writes=False):
        self._rx = rx
        self._tx = tx
        self._rpoll = select.poll()
        self._rpoll.register(rx_poll if rx_poll is not None else rx, select.POLLIN)
        self._wpoll = None
        if guard_writes:
            self._wpoll = select.poll()
            self._wpoll.register(tx, select.POLLOUT)
        self.eof = False

    def read(self, limit=64):
        out = b""
        while len(out) < limit:
            ready = self._rpoll.poll(0)
            if not ready or not ready[0][1] & select.POLLIN:
                break
            try:
                byte = self._rx.read(1)
            except OSError:
                break
            if not byte:
                self.eof = True
                break
            out += byte
        return out

    def write(self, data):
        if self._wpoll is not None:
            ready = self._wpoll.poll(0)
            if not ready or not ready[0][1] & select.POLLOUT:
                return
        try:
            self._tx.write(data)
        except OSError:
            pass


# -- assembly ------------------------------------------------------------------------------------


class Hal:
    """What the application drives: ``lights``, ``outputs``, ``inputs``, ``link`` (to the host),
    ``ctl`` (simulator control link or None), ``led`` (status LED or None)."""

    def __init__(self, config, ctl_fd=None):
        self.sim = ctl_fd is not None or not has_pins()
        n_lights, n_outputs, n_inputs = len(config.LIGHTS), len(config.OUTPUTS), len(config.INPUTS)
        host_in, host_out = sys.stdin.buffer, sys.stdout.buffer
        self.link = StreamLink(host_in, host_out, rx_poll=sys.stdin, guard_writes=self.sim)
        self.ctl = None
        self.led = None
        if self.sim:
            self.lights = [SimPwm() for _ in range(n_lights)]
            self.outputs = [SimOut() for _ in range(n_outputs)]
            self.inputs = [SimIn() for _ in range(n_inputs)]
            if ctl_fd is not None:
                stream = open(ctl_fd, "r+b")
                self.ctl = StreamLink(stream, stream)
        else:
            self.lights = [PwmOut(g, config.LIGHTS_ACTIVE_HIGH, config.PWM_FREQ) for g in config.LIGHTS]
            self.outputs = [PinOut(g, config.OUTPUTS_ACTIVE_HIGH) for g in config.OUTPUTS]
            self.inputs = [PinIn(g, active_low) for g, active_low, _ in config.INPUTS]
            if config.STATUS_LED is not None:
                self.led = PinOut(config.STATUS_LED, True)

    def reset(self):
        """Restart the board (after a crash); on the simulator, exit."""
        if self.sim:
            raise SystemExit(70)
        machine.reset()
