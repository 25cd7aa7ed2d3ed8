"""Skyloop calibration: stand logs -> motor constants -> a drone profile (see DESIGN.md).

    skyloop calibrate STAND_LOG... --profile BASE -o mydrone.json [--json] [--report DIR]

Modules, in the order the data flows:
    data       read our stand log / a Tyto export / the Bitcraze CSV; screen rows (faults, tare, steps)
    tyto       Tyto/RCbenchmark exports, through thrust_stand's importer
    fit        kf, km (T = k w^2) and the throttle -> w curve, robust, with 95 % CIs
    steps      motor time constants up/down and pure delay from step responses
    calibrate  all of it into a profile (`calibrate(paths, base_profile)`), with per-field sources
    hover      hover closure: sum kf w^2 vs m g at logged hover speeds
    report     text summary and PNG (matplotlib only here)
    synthetic  stand logs with known truth from the sim's motor model, for tests
    cli        the `skyloop calibrate` verb
"""
