# tillbox companion board: runs at boot. Ctrl-C (from mpremote) stops it at the REPL;
# Ctrl-D there restarts it. The application lives in tbc_app (compiled to .mpy).
import tbc_app

tbc_app.main()
