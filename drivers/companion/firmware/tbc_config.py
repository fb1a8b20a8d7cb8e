# Wiring of the companion board (Raspberry Pi Pico GPIO numbers). Edit to match yours.

# Light tower channels, in protocol order: 0 red, 1 amber, 2 green. Driven with PWM
# (pattern "pulse" needs a transistor/MOSFET stage; a relay tower should use steady/blink).
LIGHTS = (2, 3, 4)
LIGHTS_ACTIVE_HIGH = True
PWM_FREQ = 1000

# Pulse outputs (drawer solenoid driver), in protocol order.
OUTPUTS = (6,)
OUTPUTS_ACTIVE_HIGH = True

# Inputs, in protocol order: (gpio, active_low, debounce_ms). Active-low inputs get the
# internal pull-up: wire the switch between the pin and GND.
# 0: help button, 1: bag-area or door sensor.
INPUTS = ((14, True, 30), (15, True, 100))

# Lights shown when the host's heartbeat stops ("help needed": amber blinking), as
# (pattern, period_ms) per channel; patterns: 0 off, 1 steady, 2 blink, 3 pulse.
FALLBACK = ((0, 0), (2, 1000), (0, 0))

# Before the host's first hello, fall back after this long without a host frame.
BOOT_HEARTBEAT_MS = 5000

# The on-board LED mirrors the host link (on while the host is heard); None to disable.
STATUS_LED = "LED"
