; Inno Setup 6.3+ script: the Windows installer for Grok Desktop.
; Wraps the PyInstaller one-folder bundle (packaging/pyinstaller/grok-desktop.spec) into one
; setup .exe with a Start-menu entry, an optional desktop icon and an uninstaller.
; Built by packaging/windows/build_windows.ps1, which passes the version read from
; app/__init__.py (the only place it is written):
;   ISCC.exe /DAppVersion=X.Y.Z /DVariant=cuda /DBundleDir=... /DOutputDir=... grok-desktop.iss

#ifndef AppVersion
  #error Pass /DAppVersion=X.Y.Z (build_windows.ps1 reads it from app\__init__.py)
#endif
#ifndef Variant
  #define Variant "cuda"
#endif
#ifndef RepoRoot
  #define RepoRoot AddBackslash(SourcePath) + "..\.."
#endif
#ifndef BundleDir
  #define BundleDir RepoRoot + "\packaging\build\pyinstaller-" + Variant + "\dist\grok-desktop"
#endif
#ifndef OutputDir
  #define OutputDir RepoRoot + "\packaging\dist"
#endif
#define AppName "Grok Desktop"
#define AppExe "GrokDesktop.exe"

[Setup]
; AppId identifies the app for upgrades and the uninstaller: never change it.
AppId={{CACF60A7-2964-446D-A404-BED93BD26333}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=Grok Desktop developers
VersionInfoVersion={#AppVersion}
VersionInfoProductName={#AppName}
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
; per-user install by default (no UAC prompt); the user may choose all users instead
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir={#OutputDir}
OutputBaseFilename=grok-desktop-{#AppVersion}-windows-x64-{#Variant}-setup
SetupIconFile={#RepoRoot}\resources\icons\grok-desktop.ico
UninstallDisplayIcon={app}\{#AppExe}
UninstallDisplayName={#AppName}
WizardStyle=modern
Compression=lzma2
SolidCompression=yes
LZMANumBlockThreads=4

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#AppExe}"; Comment: "Chat with Grok-2 on this computer"
Name: "{autoprograms}\{#AppName} (demo model)"; Filename: "{app}\{#AppExe}"; Parameters: "--demo"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

; The uninstaller removes {app} only. Conversations, settings and the demo model live in the
; user's folders (%LOCALAPPDATA%\grok-desktop), which an uninstall leaves in place.
