# Build the Windows installer: PyInstaller one-folder bundle -> Inno Setup setup .exe.
# See packaging/README.md ("Windows"). Run from any folder in PowerShell 5.1+ on Windows 10/11 x64:
#
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1            # NVIDIA
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1 -Variant cpu
#
# Needs: Python 3.11+ x64 from python.org (py launcher), Inno Setup 6 (winget install
# JRSoftware.InnoSetup). Output: packaging\dist\grok-desktop-<version>-windows-x64-<variant>-setup.exe
param(
    [ValidateSet("cuda", "cpu")] [string] $Variant = "cuda",
    [string] $Python = "py -3.11",
    [string] $TorchSpec = "torch==2.13.0",
    # PyPI's Windows torch wheels are CPU-only: the CUDA build comes from PyTorch's own index.
    [string] $TorchIndex = ""
)
$ErrorActionPreference = "Stop"
$Root = Resolve-Path (Join-Path $PSScriptRoot "..\..")
$Build = Join-Path $Root "packaging\build"
$Venv = Join-Path $Build "venv-win-$Variant"
$VenvPy = Join-Path $Venv "Scripts\python.exe"
$Bundle = Join-Path $Build "pyinstaller-$Variant\dist\grok-desktop"
if (-not $TorchIndex) {
    $TorchIndex = if ($Variant -eq "cuda") { "https://download.pytorch.org/whl/cu128" } else { "https://download.pytorch.org/whl/cpu" }
}
$started = Get-Date
function Step($what) { Write-Host ("`n== {0} ({1:n0}s)" -f $what, ((Get-Date) - $started).TotalSeconds) }
function Run($exe, [string[]] $argv) {
    & $exe @argv
    if ($LASTEXITCODE -ne 0) { throw "$exe $($argv -join ' ') failed with exit code $LASTEXITCODE" }
}

Step "build venv ($Variant)"
if (-not (Test-Path $VenvPy)) {
    $py = $Python.Split(" ")
    Run $py[0] (@($py | Select-Object -Skip 1) + @("-m", "venv", $Venv))
}
Run $VenvPy @("-m", "pip", "install", "-q", $TorchSpec, "--index-url", $TorchIndex)
$deps = & $VenvPy -c "import tomllib; print('\n'.join(tomllib.load(open(r'$Root\pyproject.toml','rb'))['project']['dependencies']))"
$deps | Set-Content (Join-Path $Build "runtime-requirements.txt")
Run $VenvPy @("-m", "pip", "install", "-q", "-r", (Join-Path $Build "runtime-requirements.txt"), "-r", (Join-Path $Root "packaging\requirements-build.txt"))

Step "PyInstaller bundle"
Run $VenvPy @("-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
    "--distpath", (Join-Path $Build "pyinstaller-$Variant\dist"),
    "--workpath", (Join-Path $Build "pyinstaller-$Variant\work"),
    (Join-Path $Root "packaging\pyinstaller\grok-desktop.spec"))

Step "smoke test of the bundle"
$home_ = Join-Path ([System.IO.Path]::GetTempPath()) ("grok-desktop-smoke-" + [guid]::NewGuid())
$env:GROK_DESKTOP_HOME = $home_
Run (Join-Path $Bundle "grok-desktop.exe") @("--version")
Run (Join-Path $Bundle "grok-desktop.exe") @("generate", "--demo", "--prompt", "hi", "--max-tokens", "8", "--json")
Remove-Item Env:GROK_DESKTOP_HOME
Remove-Item -Recurse -Force $home_

Step "Inno Setup"
$version = & $VenvPy -c "import sys; sys.path.insert(0, r'$Root\packaging\pyinstaller'); import bundle_config; print(bundle_config.VERSION)"
$iscc = (Get-Command ISCC.exe -ErrorAction SilentlyContinue).Source
if (-not $iscc) {
    foreach ($dir in @("${env:ProgramFiles(x86)}\Inno Setup 6", "$env:ProgramFiles\Inno Setup 6", "$env:LOCALAPPDATA\Programs\Inno Setup 6")) {
        if (Test-Path "$dir\ISCC.exe") { $iscc = "$dir\ISCC.exe"; break }
    }
}
if (-not $iscc) { throw "ISCC.exe not found: install Inno Setup 6 (winget install JRSoftware.InnoSetup)" }
Run $iscc @("/Q", "/DAppVersion=$version", "/DVariant=$Variant", "/DBundleDir=$Bundle",
    "/DOutputDir=$(Join-Path $Root 'packaging\dist')", (Join-Path $PSScriptRoot "grok-desktop.iss"))

Step "done"
Get-ChildItem (Join-Path $Root "packaging\dist\grok-desktop-$version-windows-x64-$Variant-setup.exe") |
    ForEach-Object { "{0}: {1:n0} MB" -f $_.FullName, ($_.Length / 1MB) }
